"""`tollbooth`: the command line. Each command group lives in its own module of this package
and exposes `register(subparsers)`, which adds its parser and sets `func(args) -> int`.

Every command takes `--config PATH` (default ./config.yaml). Exit codes: 0 success, 1 a
runtime failure (printed to stderr, no traceback), 2 bad usage or an invalid config.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway.config import ConfigError

# Command modules, in the order `tollbooth --help` lists them.
COMMAND_MODULES = (
    "gateway.cli.serve",
    "gateway.cli.migrate",
    "gateway.cli.config_cmd",
    "gateway.cli.customers",
    "gateway.cli.keys",
    "gateway.cli.usage",
    "gateway.cli.maintenance",
    "gateway.cli.pricing_cmd",
    "gateway.cli.billing",
    "gateway.cli.portal",
    "gateway.cli.mock_provider",
    "gateway.cli.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollbooth", description="Tollbooth: a metering gateway for AI APIs."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="config.yaml", metavar="PATH", help="config file (default: %(default)s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"tollbooth: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
