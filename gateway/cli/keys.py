"""`tollbooth keys create|list|revoke`: the API keys customers call the gateway with.

`create` prints a short description, then the new key alone on the last line of stdout, so a
script can take it with `tail -n 1`. The key is shown this once: only its SHA-256 is stored.
`list` never shows a key, only its id and display prefix (`tb_` + 8 characters); `--format
json` prints one array of objects with `id`, `prefix`, `customer_id`, `project_id`, `user_id`,
`name`, `created_at`, `revoked_at` (ISO 8601 or null). `revoke` is honoured by every gateway
instance within 5 seconds (`gateway/auth.py` caches a key 2 s). Exit 1 for an unknown
customer or key, or a database error.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.admin import Admin, key_json
from gateway.cli.main import add_config_option
from gateway.cli.runtime import (
    OUTPUT_FORMATS,
    Runtime,
    add_format_option,
    render_table,
    run_command,
    short_time,
    write_output,
)
from storage.accounts import KEY_PREFIX, AccountStore


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "keys", help="create, list and revoke API keys", description=__doc__
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="make a key (printed once, on the last line)")
    create.add_argument("--customer", required=True, metavar="ID", help="the key's customer")
    create.add_argument("--project", metavar="P", help="stored on each event as project_id")
    create.add_argument("--user", metavar="U", help="stored on each event as user_id")
    create.add_argument("--name", metavar="LABEL", help="a label for listings")
    add_config_option(create)
    create.set_defaults(func=_create)

    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--customer", metavar="ID", help="only this customer's keys")
    add_format_option(listing, OUTPUT_FORMATS)
    add_config_option(listing)
    listing.set_defaults(func=_list)

    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", metavar="KEY_ID", help="e.g. key_0123456789abcdef")
    add_config_option(revoke)
    revoke.set_defaults(func=_revoke)


def _admin(runtime: Runtime) -> Admin:
    return Admin(AccountStore(runtime.pool), runtime.settings)


def _create(args: argparse.Namespace) -> int:
    async def body(runtime: Runtime) -> int:
        record, plaintext = await _admin(runtime).create_key(
            args.customer, project_id=args.project, user_id=args.user, name=args.name
        )
        scope = [f"customer {record.customer_id}"]
        if record.project_id:
            scope.append(f"project {record.project_id}")
        if record.user_id:
            scope.append(f"user {record.user_id}")
        label = f" {record.name!r}" if record.name else ""
        print(f"created key {record.id}{label} for {', '.join(scope)}")
        print("the key is shown only this once; store it now:")
        print(plaintext, flush=True)
        return 0

    return run_command(args, body)


def _list(args: argparse.Namespace) -> int:
    async def body(runtime: Runtime) -> int:
        keys = await _admin(runtime).list_keys(args.customer)
        if args.format == "json":
            text = json.dumps([key_json(k) for k in keys], indent=2) + "\n"
        else:
            text = render_table(
                ["ID", "PREFIX", "CUSTOMER", "PROJECT", "USER", "NAME", "CREATED", "REVOKED"],
                [
                    [
                        k.id,
                        KEY_PREFIX + k.prefix + "…",
                        k.customer_id,
                        k.project_id,
                        k.user_id,
                        k.name,
                        short_time(k.created_at),
                        short_time(k.revoked_at),
                    ]
                    for k in keys
                ],
            )
        write_output(text, None)
        return 0

    return run_command(args, body)


def _revoke(args: argparse.Namespace) -> int:
    async def body(runtime: Runtime) -> int:
        if await _admin(runtime).revoke_key(args.key_id):
            print(f"revoked key {args.key_id}")
        else:
            print(f"key {args.key_id} was already revoked")
        return 0

    return run_command(args, body)
