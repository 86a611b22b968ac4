"""`rqsid study`: the hourglass audit (the four findings of Kuai et al. 2024) on a catalog, as a Prefect
flow logged to MLflow, with a markdown report. Prefect and MLflow are imported only when it runs."""

from __future__ import annotations

import argparse
import json
import shlex
import time

from cli.options import add_config_flags, config_from
from rqsid import RqsidError


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
                   help="reduced study (2 seeds, RQ-VAE 30 epochs, uniform + skewed inputs only, 1-minute generators, "
                        "beam 10, one listed K): "
                        "< 15 min on Scientific")
    p.add_argument("--seeds", type=int, help="tokenizer seeds (default: 2 quick, 3 full)")
    p.add_argument("--generator-seeds", type=int, default=1,
                   help="generator runs per SID variant, each on that seed's SIDs (default 1)")
    p.add_argument("--ks", help="comma list of top-K values besides the automatic one "
                               "(default: 1/8 of the level quick; 1/32,1/8,1/4 full)")
    p.add_argument("--methods", default="rqvae,rkmeans", help="tokenizers to fit (default rqvae,rkmeans)")
    p.add_argument("--generator-minutes", type=float, help="training budget per generator (generator.max_train_minutes)")
    p.add_argument("--no-generator", action="store_true", help="tokenizer findings only (1 and 2)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: ./hourglass-study/<dataset>)")
    p.add_argument("--rerender", metavar="DIR", help="only rewrite DIR/report.md from DIR/results.json (no measuring)")
    add_config_flags(p)
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
    """The config (file, --set, --generator-minutes) over the mode's profile ("quick" or "full"), validated
    now for a clear error before any work."""
    return config_from(args, profile="quick" if args.quick else "full",
                       extra={"generator.max_train_minutes": args.generator_minutes})


def cmd_study(args: argparse.Namespace) -> int:
    if args.rerender:
        from rqsid.study import rerender_report

        print(f"report: {rerender_report(args.rerender)}")
        return 0
    from flows.study import hourglass_study
    from tasks.services import prefect_api

    config = study_config(args)
    started = time.perf_counter()
    with prefect_api(config):
        result = hourglass_study(
            dataset=args.dataset, quick=args.quick, seeds=args.seeds, out=args.out, embeddings=args.embeddings,
            interactions=args.interactions, config=config, ks=_int_list(args.ks, "--ks"),
            methods=[m.strip() for m in args.methods.split(",") if m.strip()], generator=not args.no_generator,
            generator_seeds=args.generator_seeds, command=command_line(args),
        )
    for finding in result["findings"]:
        print(f"finding {finding['number']}: {finding['verdict']}: {finding['reason']}")
    reused = result["reused"]
    print(f"reused from earlier runs: {reused.get('fits', 0)} of {reused.get('fits_total', 0)} fits, "
          f"{reused.get('generators', 0)} of {reused.get('generators_total', 0)} generator runs (equal SIDs share one)")
    print(f"report: {result['report']}")
    print(f"MLflow run {result['mlflow_run_id']}; wall {time.perf_counter() - started:.0f} s")
    print(json.dumps(result["timing"], indent=1))
    return 0
