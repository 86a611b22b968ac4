"""`rqsid study`: the hourglass audit (the four findings of Kuai et al. 2024) on a catalog, as a Prefect
flow logged to MLflow, with a markdown report. Prefect and MLflow are imported only when it runs."""

from __future__ import annotations

import argparse
import json
import shlex
import time

from rqsid import RqsidError
from rqsid.config import load_config, parse_override


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help="hourglass study: concentration, uniform vs skewed inputs, head/tail, pruning (markdown report)",
        description="Measure the four hourglass findings of Kuai et al. (2024) on a catalog: per-layer "
        "concentration of our RQ-VAE, residual k-means and reference SIDs; the same tokenizers on uniform "
        "vs Zipf-skewed synthetic inputs; the generator on head vs tail targets; and the generator on "
        "baseline, layer-2-dropped and top-K SIDs. Logs to MLflow; writes report.md, results.json and plots.",
    )
    p.add_argument("--dataset", default="scientific", help="beauty, scientific, or a catalog folder/file (default: scientific)")
    p.add_argument("--interactions", metavar="FILE", help="interactions table (default: those that come with the dataset)")
    p.add_argument("--embeddings", metavar="FILE", help="item embeddings parquet to reuse (default: embed the catalog, cached)")
    p.add_argument("--quick", action="store_true",
                   help="reduced study (2 seeds, RQ-VAE 30 epochs, uniform + skewed inputs only, 1-minute generators, beam 10, one listed K): "
                        "< 15 min on Scientific")
    p.add_argument("--seeds", type=int, help="tokenizer seeds (default: 2 quick, 3 full)")
    p.add_argument("--generator-seeds", type=int, default=1, help="generator runs per SID variant, each on that seed's SIDs (default 1)")
    p.add_argument("--ks", help="comma list of top-K values besides the automatic one (default: 1/8 of the level quick; 1/32,1/8,1/4 full)")
    p.add_argument("--methods", default="rqvae,rkmeans", help="tokenizers to fit (default rqvae,rkmeans)")
    p.add_argument("--generator-minutes", type=float, help="training budget per generator (generator.max_train_minutes)")
    p.add_argument("--no-generator", action="store_true", help="tokenizer findings only (1 and 2)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: ./hourglass-study/<dataset>)")
    p.add_argument("--config", metavar="FILE", help="config file (.toml, .json, .yaml)")
    p.add_argument("--set", dest="overrides", metavar="SECTION.FIELD=VALUE", action="append", default=[],
                   help="override one config value, e.g. --set quantizer.epochs=50 (repeatable)")
    p.set_defaults(func=cmd_study)


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise RqsidError(f"{what} must be a comma list of integers, got {text!r}") from None


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (recorded in the report)."""
    parts = ["rqsid", "study", "--dataset", args.dataset]
    for flag, value in (("--interactions", args.interactions), ("--embeddings", args.embeddings), ("--seeds", args.seeds),
                        ("--ks", args.ks), ("--generator-minutes", args.generator_minutes), ("--out", args.out),
                        ("--config", args.config)):
        if value is not None:
            parts += [flag, str(value)]
    if args.generator_seeds != 1:
        parts += ["--generator-seeds", str(args.generator_seeds)]
    if args.methods != "rqvae,rkmeans":
        parts += ["--methods", args.methods]
    parts += ["--quick"] * args.quick + ["--no-generator"] * args.no_generator
    for override in args.overrides:
        parts += ["--set", override]
    return shlex.join(parts)


def study_config(args: argparse.Namespace):
    """The caller's config (file, --set, --generator-minutes), validated now for a clear error before any
    work; the flow gets only the fields the caller set, so the study's mode profile fills the rest."""
    overrides = dict(parse_override(text) for text in args.overrides)
    if args.generator_minutes is not None:
        overrides["generator.max_train_minutes"] = args.generator_minutes
    return load_config(args.config, overrides)


def cmd_study(args: argparse.Namespace) -> int:
    from flows.commands import prefect_api
    from flows.study import hourglass_study

    config = study_config(args)
    started = time.perf_counter()
    with prefect_api(config):
        result = hourglass_study(
            dataset=args.dataset, quick=args.quick, seeds=args.seeds, out=args.out, embeddings=args.embeddings,
            interactions=args.interactions,
            config=config.model_dump(mode="json", exclude_unset=True), ks=_int_list(args.ks, "--ks"),
            methods=[m.strip() for m in args.methods.split(",") if m.strip()], generator=not args.no_generator,
            generator_seeds=args.generator_seeds, command=command_line(args),
        )
    for finding in result["findings"]:
        print(f"finding {finding['number']}: {finding['verdict']}: {finding['reason']}")
    print(f"report: {result['report']}")
    print(f"MLflow run {result['mlflow_run_id']}; wall {time.perf_counter() - started:.0f} s")
    print(json.dumps(result["timing"], indent=1))
    return 0
