"""`tollbooth portal link --customer ID [--project P] [--ttl 24h] [--base-url URL]`.

Prints a signed link to the customer usage portal, `BASE/portal?token=...`, alone on the last
line of stdout (the expiry goes to stderr). BASE is `--base-url`, else `portal.base_url`,
else `http://server.host:server.port`. The link is signed with the secret every instance
shares (`TOLLBOOTH_PORTAL_SECRET`, else the one kept in Postgres), so any instance opens it.
`--ttl` is a duration ("90m", "24h", "7d"; default `portal.link_ttl_s`), at most 90 days.

Exit 2 for bad usage (a bad duration), 1 for an unknown or suspended customer or a database
error.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.cli.main import add_config_option
from gateway.cli.runtime import CommandError, Runtime, announce, run_command, usage_error
from gateway.config import StripeConfig
from gateway.web.portal_link_route import MAX_TTL_S
from gateway.web.portal_links import issue_link, link_url
from gateway.web.sessions import Signer, load_web_secret
from storage.accounts import AccountStore


def register(sub: Any) -> None:
    parser = sub.add_parser("portal", help="links to the customer usage portal")
    inner = parser.add_subparsers(dest="portal_command", metavar="SUBCOMMAND", required=True)
    link = inner.add_parser(
        "link",
        help="print a signed, expiring portal link",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    link.add_argument("--customer", metavar="ID", required=True)
    link.add_argument("--project", metavar="P", help="show this project only")
    link.add_argument("--ttl", metavar="DURATION", help='e.g. "24h" (default: portal.link_ttl_s)')
    link.add_argument("--base-url", metavar="URL", help="the gateway's public URL")
    add_config_option(link)
    link.set_defaults(func=_link)


def _link(args: argparse.Namespace) -> int:
    ttl_s: int | None = None
    if args.ttl is not None:
        try:
            ttl_s = StripeConfig.parse_duration(args.ttl)
        except ValueError as exc:
            return usage_error(str(exc))
        if not 60 <= ttl_s <= MAX_TTL_S:
            return usage_error(f"--ttl must be between 1m and {MAX_TTL_S // 86400}d")

    async def body(runtime: Runtime) -> int:
        settings = runtime.settings
        customer = await AccountStore(runtime.pool).get_customer(args.customer)
        if customer is None:
            raise CommandError(f"unknown customer {args.customer!r}")
        if customer.suspended:
            raise CommandError(
                f"customer {args.customer!r} is suspended; its link would "
                "not open (tollbooth customers update ID --unsuspend)"
            )
        signer = Signer(await load_web_secret(runtime.pool), "portal-link")
        ttl = timedelta(seconds=ttl_s or settings.portal.link_ttl_s)
        token, expires = issue_link(
            signer, customer.id, args.project, ttl=ttl, now=datetime.now(UTC)
        )
        server = settings.server
        base = args.base_url or settings.portal.base_url or f"http://{server.host}:{server.port}"
        announce(
            f"portal link for {customer.id}"
            f"{' project ' + args.project if args.project else ''}, "
            f"expires {expires.isoformat()}"
        )
        print(link_url(base, token), flush=True)
        return 0

    return run_command(args, body)
