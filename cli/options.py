"""The flags every command shares, declared once: `--config FILE` and `--set SECTION.FIELD=VALUE`, and the
one function that turns them (plus a command's own flags and a named profile) into an RqsidConfig."""

from __future__ import annotations

import argparse
import time
from typing import Any


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="config file (.toml, .json, .yaml)")
    parser.add_argument("--set", dest="overrides", metavar="SECTION.FIELD=VALUE", action="append", default=[],
                        help="override one config value, e.g. --set quantizer.levels=4 (repeatable)")


def config_from(args: argparse.Namespace, profile: str | None = None, extra: dict[str, Any] | None = None):
    """The config file, then --set, then the command's own flags (`extra`, where given); the named profile
    (rqsid.config.PROFILES) fills only what none of them set."""
    from rqsid.config import load_config, parse_override

    overrides = dict(parse_override(text) for text in args.overrides)
    overrides.update({key: value for key, value in (extra or {}).items() if value is not None})
    return load_config(args.config, overrides, profile)


def step(message: str) -> float:
    """Print a timestamped progress line; returns the time it started (for the step's duration)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
    return time.perf_counter()
