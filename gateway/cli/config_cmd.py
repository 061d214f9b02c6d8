"""`tollbooth config check [PATH]`: validate a config file and print what it defines."""

from __future__ import annotations

import argparse

from gateway.cli.main import add_config_option
from gateway.config import load_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("config", help="validate config.yaml")
    inner = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = inner.add_parser("check", help="validate a config file and print a summary")
    check.add_argument("path", nargs="?", help="config file (default: --config)")
    add_config_option(check)
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    settings = load_settings(args.path or args.config)
    print(f"{settings.source_path}: OK (hash {settings.source_hash})")
    print("providers:")
    for name, provider in settings.providers.items():
        key_state = "set" if provider.api_key() else "NOT SET"
        env = f", key from ${provider.api_key_env} ({key_state})" if provider.api_key_env else ""
        print(f"  {name}: {provider.kind} at {provider.base_url}{env}")
    print("models:")
    for route in settings.models or []:
        print(f"  {route.match} -> {route.provider}")
    if not settings.models:
        print("  (no rules: each API kind goes to its first provider)")
    print("tiers:")
    for name, tier in settings.tiers.items():
        limits = tier.limits.model_dump(exclude_none=True)
        shown = ", ".join(f"{k}={v}" for k, v in limits.items()) or "unlimited"
        print(f"  {name}: {shown}{' (shadow)' if tier.shadow else ''}")
    pricing = settings.pricing
    print(
        f"pricing: markup {pricing.markup_percent}%, per request ${pricing.per_request_usd}, "
        f"unknown models: {pricing.unknown_model}"
    )
    return 0
