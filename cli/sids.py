"""Library commands of the `rqsid` CLI: fit, sids, report, prune. No Prefect, MLflow or GX on this path.

`rqsid sids` runs the whole index build on one machine: catalog -> embeddings -> tokenizer ->
SIDs -> report -> choose K -> prune -> report, writing every artifact under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cli.options import add_config_flags, config_from, step

PIPELINE_FILES = """Writes OUT/embeddings.parquet (unless --embeddings is given), OUT/tokenizer/,
OUT/sids.parquet, OUT/sids_pruned.parquet, OUT/report.json, OUT/report_pruned.json and
OUT/prune_trace.json (K, retained Gini and collision rate for every K tried)."""


def _source_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--catalog", help="canonical catalog parquet (its item texts are embedded)")
    source.add_argument("--embeddings", help="embeddings parquet (item_id, vector); skips embedding")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", choices=("rqvae", "rkmeans"), default=None, help="quantizer (default: config)")
    add_config_flags(p)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit", help="fit a residual quantizer (RQ-VAE or residual k-means) on a catalog's embeddings",
        description="Writes OUT/embeddings.parquet (unless --embeddings is given) and OUT/tokenizer/.",
    )
    _source_arguments(p)
    p.set_defaults(func=cmd_fit)

    p = subparsers.add_parser(
        "sids", help="build SIDs end to end: embed, fit, assign, report, prune the layer-2 hourglass, report",
        description=PIPELINE_FILES,
    )
    _source_arguments(p)
    p.add_argument("--tokenizer", default=None, help="reuse a fitted tokenizer folder instead of fitting one")
    p.set_defaults(func=cmd_sids)

    p = subparsers.add_parser(
        "report", help="per-layer distribution report (Gini, entropy, utilisation, paths, collisions) of SIDs",
        description="SIDS: our SID parquet or a public reference *.index.json. Several files print side by side.",
    )
    p.add_argument("sids", nargs="+", metavar="SIDS", help="SID parquet or reference *.index.json")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--id-offset", type=int, default=0, help="added to a reference index's 0-based keys (Beauty: 1)")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser(
        "prune", help="remove the most frequent tokens of a layer (adaptive top-K, fixed K, or the whole layer)",
        description="Prints the report before and after, and writes the pruned SID parquet. "
        "Default: --auto (the smallest K that passes the config's prune section).",
    )
    p.add_argument("sids", metavar="SIDS", help="SID parquet or reference *.index.json")
    p.add_argument("--out", required=True, help="pruned SID parquet to write")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--k", type=int, default=None, help="remove exactly the K most frequent tokens")
    how.add_argument("--auto", action="store_true", help="choose K from prune.gini_threshold / max_collision_rate")
    how.add_argument("--drop-layer", action="store_true", help="remove the whole layer")
    p.add_argument("--level", type=int, default=None, help="1-based layer (default: prune.level, 2)")
    p.add_argument("--id-offset", type=int, default=0, help="added to a reference index's 0-based keys (Beauty: 1)")
    add_config_flags(p)
    p.set_defaults(func=cmd_prune)


def _embeddings(args: argparse.Namespace, config, out: Path):
    """(item_ids, X) from --embeddings, or by embedding --catalog into OUT/embeddings.parquet."""
    from rqsid.embed import read_embeddings, write_embeddings

    if args.embeddings:
        return read_embeddings(args.embeddings)
    import numpy as np

    from cli.data import checked_catalog
    from rqsid.embed import TextEmbedder, embed_catalog

    codebook_size = None if getattr(args, "tokenizer", None) else config.quantizer.codebook_size
    catalog = checked_catalog(args.catalog, out / "quarantine.parquet", codebook_size)
    start = step(f"embedding {catalog.num_rows} items of {args.catalog}")
    table = embed_catalog(catalog, TextEmbedder.from_config(config.embed), max_chars=config.embed.max_chars, progress=True)
    item_ids = table.column("item_id").to_numpy(zero_copy_only=False).astype(object)
    X = np.array(table.column("vector").combine_chunks().flatten(), dtype=np.float32).reshape(table.num_rows, -1)
    path = write_embeddings(out / "embeddings.parquet", item_ids, X)
    print(f"  {len(item_ids)} x {X.shape[1]} embeddings in {time.perf_counter() - start:.1f} s -> {path}")
    return item_ids, X


def _fit(X, config, out: Path):
    from rqsid.quantize import fit_sized

    q = config.quantizer
    start = step(f"fitting {q.method}: {q.codebook_size} codes per level on {len(X)} items")
    # a level is added while the codes collide for more items than the gate allows
    tokenizer = fit_sized(q, X, config.gate.max_collision_rate, progress=True)
    tried = tokenizer.code_space.get("tries", [])[:-1]
    print(f"  code space: {tokenizer.levels} levels x {q.codebook_size} codes"
          + "".join(f"; {t['levels']} levels collided for {t['collision_rate']:.3f}" for t in tried))
    path = tokenizer.save(out / "tokenizer")
    print(f"  fitted in {time.perf_counter() - start:.1f} s, reconstruction error "
          f"{tokenizer.reconstruction_error(X):.4f} -> {path}")
    return tokenizer


def cmd_fit(args: argparse.Namespace) -> int:
    config = config_from(args, extra={"quantizer.method": args.method})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, X = _embeddings(args, config, out)
    _fit(X, config, out)
    return 0


def cmd_sids(args: argparse.Namespace) -> int:
    from rqsid.jsonio import write_json
    from rqsid.metrics import format_report, format_side_by_side, report_to_json, table_report
    from rqsid.prune import auto_prune
    from rqsid.quantize import load_tokenizer
    from rqsid.sids import assign_sids, write_sids

    config = config_from(args, extra={"quantizer.method": args.method})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    item_ids, X = _embeddings(args, config, out)
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else _fit(X, config, out)
    step("assigning SIDs")
    table = assign_sids(item_ids, tokenizer.encode(X), tokenizer.codebook_sizes)
    write_sids(out / "sids.parquet", table)
    report = report_to_json(table_report(table))
    write_json(out / "report.json", report)
    print(format_report(report))
    step(f"choosing K at layer {config.prune.level} (Gini <= {config.prune.gini_threshold}, "
          f"collisions <= {config.prune.max_collision_rate})")
    result = auto_prune(table, config.prune)
    write_sids(out / "sids_pruned.parquet", result.table)
    pruned_report = report_to_json(result.report)
    write_json(out / "report_pruned.json", pruned_report)
    write_json(out / "prune_trace.json", result.trace)
    print(_prune_summary(result, config.prune.level))
    print(format_side_by_side({"before": report, "after": pruned_report}))
    print(f"wrote {out}/sids.parquet, sids_pruned.parquet, report.json, report_pruned.json, prune_trace.json")
    return 0


def _prune_summary(result, level: int) -> str:
    if result.dropped:
        return f"no K met both bounds: layer {level} dropped (fallback)"
    if not result.met_bounds:
        return "no K met both bounds: SIDs kept unpruned (fallback), the gate will reject them"
    return f"chosen K = {result.k}" + (" (layer already within bounds, nothing removed)" if result.k == 0 else "")


def cmd_report(args: argparse.Namespace) -> int:
    from rqsid.metrics import format_report, format_side_by_side, report_to_json, table_report
    from rqsid.sids import load_sids

    reports = {path: report_to_json(table_report(load_sids(path, id_offset=args.id_offset))) for path in args.sids}
    if args.json:
        print(json.dumps(reports[args.sids[0]] if len(reports) == 1 else reports, indent=1))
    elif len(reports) == 1:
        print(format_report(next(iter(reports.values()))))
    else:
        print(format_side_by_side(dict(zip(_labels(args.sids), reports.values(), strict=True))))
    return 0


def _labels(paths: list[str]) -> list[str]:
    """Column names: the file name, prefixed by the nearest parent folder that tells equal names apart."""
    parts = [Path(path).resolve().parts for path in paths]
    labels = []
    for mine in parts:
        twins = [p for p in parts if p[-1] == mine[-1]]
        depth = next((d for d in range(2, len(mine) + 1) if len({p[-d:-d + 1] for p in twins}) == len(twins)), None)
        labels.append(mine[-1] if len(twins) == 1 or depth is None else f"{mine[-depth]}/{mine[-1]}")
    return labels


def cmd_prune(args: argparse.Namespace) -> int:
    from rqsid.metrics import format_side_by_side, report_to_json, table_report
    from rqsid.prune import choose_k, drop_layer, prune_top_k
    from rqsid.sids import load_sids, write_sids

    config = config_from(args).prune
    level = args.level or config.level  # not validated against quantizer.levels: the SIDs decide
    table = load_sids(args.sids, id_offset=args.id_offset)
    if args.drop_layer:
        pruned, summary = drop_layer(table, level), f"layer {level} dropped"
    elif args.k is not None:
        pruned, summary = prune_top_k(table, args.k, level), f"K = {args.k}"
    else:
        result = choose_k(table, config.gini_threshold, config.max_collision_rate, level, config.max_k, config.fallback)
        pruned, summary = result.table, _prune_summary(result, level)
    path = write_sids(args.out, pruned)
    print(summary)
    print(format_side_by_side({"before": report_to_json(table_report(table)),
                               "after": report_to_json(table_report(pruned))}))
    print(f"wrote {path}")
    return 0
