"""`tollbooth customers create|update|list`: the customers keys belong to.

A customer's tier must be one of the config's `tiers:` (default: the first one). `create`
refuses an id that exists; `update` changes only the fields given. `list --format json`
prints one array of objects with `id`, `name`, `email`, `tier`, `stripe_customer_id`,
`suspended`, `created_at`, `updated_at` (ISO 8601, UTC). `--create-in-stripe` (create, or update
of a customer not yet linked) creates the Stripe customer and stores its id. Exit 2 for bad
usage (unknown tier, nothing to update), 1 for a refusal (unknown or duplicate customer, Stripe
refusing) or a database error.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.admin import Admin, customer_json
from gateway.cli import billing_stripe
from gateway.cli.main import add_config_option
from gateway.cli.runtime import (
    OUTPUT_FORMATS,
    Runtime,
    UsageError,
    add_format_option,
    render_table,
    run_command,
    short_time,
    usage_error,
    write_output,
)
from storage.accounts import AccountStore, Customer


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "customers", help="create, update and list customers", description=__doc__
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="add a customer")
    create.add_argument("id", metavar="ID", help="customer id: letters, digits, _ . - (1-64)")
    create.add_argument("--tier", help="a tier of the --config file (default: its first tier)")
    _add_profile_options(create)
    add_config_option(create)
    create.set_defaults(func=_create)

    update = actions.add_parser("update", help="change a customer")
    update.add_argument("id", metavar="ID")
    update.add_argument("--tier", help="a tier of the --config file")
    _add_profile_options(update)
    suspension = update.add_mutually_exclusive_group()
    suspension.add_argument(
        "--suspend",
        dest="suspended",
        action="store_const",
        const=True,
        help="refuse the customer's requests (402) until --unsuspend",
    )
    suspension.add_argument(
        "--unsuspend",
        dest="suspended",
        action="store_const",
        const=False,
        help="accept the customer's requests again",
    )
    add_config_option(update)
    update.set_defaults(func=_update)

    listing = actions.add_parser("list", help="list customers")
    add_format_option(listing, OUTPUT_FORMATS)
    add_config_option(listing)
    listing.set_defaults(func=_list)


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="display name")
    parser.add_argument("--email", help="contact email")
    stripe = parser.add_mutually_exclusive_group()
    stripe.add_argument(
        "--stripe-customer",
        dest="stripe_customer",
        metavar="cus_...",
        help="the Stripe customer id usage is billed to",
    )
    stripe.add_argument(
        "--create-in-stripe",
        action="store_true",
        help="create the customer in Stripe (billing.stripe) and store its id",
    )


def _admin(runtime: Runtime) -> Admin:
    return Admin(AccountStore(runtime.pool), runtime.settings)


def _describe(customer: Customer) -> str:
    details = [f"tier {customer.tier}"]
    if customer.name:
        details.append(f"name {customer.name!r}")
    if customer.email:
        details.append(f"email {customer.email}")
    if customer.stripe_customer_id:
        details.append(f"stripe {customer.stripe_customer_id}")
    if customer.suspended:
        details.append("SUSPENDED")
    return f"{customer.id} ({', '.join(details)})"


def _create(args: argparse.Namespace) -> int:
    async def body(runtime: Runtime) -> int:
        admin = _admin(runtime)
        tier = admin.check_tier(args.tier or next(iter(runtime.settings.tiers)))
        if args.create_in_stripe:
            billing_stripe.require_stripe(runtime.settings)
        customer = await admin.create_customer(
            args.id,
            tier=tier,
            name=args.name,
            email=args.email,
            stripe_customer_id=args.stripe_customer,
        )
        if args.create_in_stripe:
            customer = await billing_stripe.create_stripe_customer(runtime, customer)
        print(f"created customer {_describe(customer)}")
        return 0

    return run_command(args, body)


def _update(args: argparse.Namespace) -> int:
    changes: dict[str, str | bool | None] = {
        field: value
        for field, value in (
            ("tier", args.tier),
            ("name", args.name),
            ("email", args.email),
            ("stripe_customer_id", args.stripe_customer),
            ("suspended", args.suspended),
        )
        if value is not None
    }

    if not changes and not args.create_in_stripe:
        return usage_error(
            "nothing to update: give --tier, --name, --email, --stripe-customer, "
            "--create-in-stripe, --suspend or --unsuspend"
        )

    async def body(runtime: Runtime) -> int:
        admin = _admin(runtime)
        if "tier" in changes:
            admin.check_tier(str(changes["tier"]))
        if args.create_in_stripe:
            billing_stripe.require_stripe(runtime.settings)
            linked = await admin.get_customer(args.id)
            if linked.stripe_customer_id:
                raise UsageError(
                    f"customer {args.id} is already linked to {linked.stripe_customer_id}"
                )
        customer = (
            await admin.update_customer(args.id, changes)
            if changes
            else await admin.get_customer(args.id)
        )
        if args.create_in_stripe:
            customer = await billing_stripe.create_stripe_customer(runtime, customer)
        print(f"updated customer {_describe(customer)}")
        return 0

    return run_command(args, body)


def _list(args: argparse.Namespace) -> int:
    async def body(runtime: Runtime) -> int:
        customers = await _admin(runtime).list_customers()
        if args.format == "json":
            text = json.dumps([customer_json(c) for c in customers], indent=2) + "\n"
        else:
            text = render_table(
                ["ID", "TIER", "NAME", "EMAIL", "STRIPE CUSTOMER", "SUSPENDED", "CREATED"],
                [
                    [
                        c.id,
                        c.tier,
                        c.name,
                        c.email,
                        c.stripe_customer_id,
                        "yes" if c.suspended else "no",
                        short_time(c.created_at),
                    ]
                    for c in customers
                ],
            )
        write_output(text, None)
        return 0

    return run_command(args, body)
