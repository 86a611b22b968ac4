"""The `rqsid` command: one parser whose sub-commands come from the command modules listed below.

The list is static and imported directly: a command module that fails to import fails `rqsid` itself,
loudly, instead of its commands silently going missing.
"""

from __future__ import annotations

import argparse
import sys

from cli import data, generator, orchestration, recommend, sids, study
from rqsid import RqsidError
from rqsid.home import ProjectHome

# Each module contributes its sub-commands through `register(subparsers)`, in this order in --help.
COMMAND_MODULES = (data, sids, generator, recommend, orchestration, study)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rqsid",
        description="Semantic IDs for a product catalog: embed, quantize, measure the hourglass, prune, retrain.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    ProjectHome.default().activate()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RqsidError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
