"""The `rqsid` command. Library commands come from rqsid/ (no Prefect import on their path);
orchestration commands import Prefect, Dask and MLflow only when they run."""

from __future__ import annotations

import argparse
import importlib
import sys

from rqsid import RqsidError
from rqsid.home import ProjectHome

# Modules that contribute sub-commands through `register(subparsers)`.
COMMAND_MODULES = ("rqsid.cli_data", "rqsid.cli_core", "rqsid.generator.cli", "flows.commands", "flows.study_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rqsid",
        description="Semantic IDs for a product catalog: embed, quantize, measure the hourglass, prune, retrain.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency, not a module still to be written
                raise
            continue
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


if __name__ == "__main__":
    sys.exit(main())
