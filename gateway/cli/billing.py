"""`tollbooth billing ...`: invoices (`billing_invoice`) and the Stripe sync (`billing_stripe`).

Each submodule exposes `add_commands(subparsers)` adding its subcommands under `billing`.
"""

from __future__ import annotations

import argparse

from gateway.cli import billing_invoice, billing_stripe


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("billing", help="invoices and the Stripe sync")
    inner = parser.add_subparsers(dest="billing_command", metavar="SUBCOMMAND", required=True)
    billing_invoice.add_commands(inner)
    billing_stripe.add_commands(inner)
