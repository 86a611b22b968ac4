"""Data commands of the `rqsid` CLI: import, demo-catalog, embed. No Prefect, MLflow or GX on this path."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cli.options import add_config_flags, config_from


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import",
        help="import a catalog (Beauty, Scientific, or a parquet/CSV/JSONL table) into canonical parquet",
        description="Writes OUT/catalog.parquet, OUT/interactions.parquet (when the source has them) and "
        "OUT/quarantine*.parquet for rows that failed validation.",
    )
    p.add_argument("source", help="a dataset folder or a catalog file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--kind", choices=("beauty", "scientific", "table"), help="source format (default: detected)")
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser(
        "demo-catalog",
        help="write a synthetic demo catalog + user histories (labelled synthetic) to run without data",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--items", type=int, default=3000, help="number of items (default 3000)")
    p.add_argument("--users", type=int, default=None, help="number of users (default 2 per item)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_catalog)

    p = subparsers.add_parser("embed", help="embed a catalog's item texts into an embeddings parquet file")
    p.add_argument("--catalog", required=True, help="canonical catalog parquet")
    p.add_argument("--out", required=True, help="embeddings parquet to write")
    p.add_argument("--model", default=None, help="sentence-transformers model folder (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-seq-length", type=int, default=None)
    add_config_flags(p)  # the flags above override the embed section
    p.set_defaults(func=cmd_embed)


def _write_tables(out: Path, catalog, interactions) -> None:
    from rqsid.catalog import validate_catalog, validate_interactions, write_catalog, write_interactions

    clean, quarantine = validate_catalog(catalog)
    write_catalog(clean, out / "catalog.parquet")
    print(f"catalog: {clean.num_rows} items -> {out / 'catalog.parquet'}")
    report_quarantine(quarantine, out / "quarantine.parquet")
    if interactions is not None:
        inter, inter_quarantine = validate_interactions(interactions, clean.column("item_id"))
        write_interactions(inter, out / "interactions.parquet")
        users = len(inter.column("user_id").unique())
        print(f"interactions: {inter.num_rows} events of {users} users -> {out / 'interactions.parquet'}")
        report_quarantine(inter_quarantine, out / "quarantine_interactions.parquet")


def report_quarantine(quarantine, path: Path | None) -> None:
    """Print how many rows were quarantined and why; write them to `path` (when given)."""
    from rqsid.catalog import quarantine_reasons, write_quarantine

    if quarantine.num_rows == 0:
        return
    reasons = ", ".join(f"{count} {reason}" for reason, count in quarantine_reasons(quarantine).items())
    where = ""
    if path is not None:
        write_quarantine(quarantine, path)
        where = f" -> {path}"
    print(f"quarantined {quarantine.num_rows} rows ({reasons}){where}")


def checked_catalog(path: str | Path, quarantine_path: Path | None, codebook_size: int | None = None):
    """A catalog file validated as `rqsid import` validates it, before anything is embedded: bad rows quarantined
    (to `quarantine_path`) and counted; RqsidError when no row is left or fewer items than a codebook has codes."""
    from rqsid.catalog import read_raw_catalog, require_items_for_codebook, validate_catalog

    clean, quarantine = validate_catalog(read_raw_catalog(path))
    if codebook_size is not None:
        require_items_for_codebook(clean.num_rows, codebook_size, quarantine.num_rows)
    report_quarantine(quarantine, quarantine_path)
    return clean


def cmd_import(args: argparse.Namespace) -> int:
    from rqsid.importers import import_dataset, replaced_utf8_ids

    catalog, interactions = import_dataset(args.source, kind=args.kind)
    replaced = replaced_utf8_ids(catalog)
    if replaced:
        print(f"warning: {len(replaced)} items had bytes that are not UTF-8 (replaced): {', '.join(replaced[:5])}")
    _write_tables(Path(args.out), catalog, interactions)
    return 0


def cmd_demo_catalog(args: argparse.Namespace) -> int:
    from rqsid.synthetic import make_demo_catalog

    catalog, interactions = make_demo_catalog(n_items=args.items, n_users=args.users, seed=args.seed)
    print("synthetic demo data (not a real catalog):")
    _write_tables(Path(args.out), catalog, interactions)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from rqsid.embed import TextEmbedder, embed_catalog

    cfg = config_from(args, extra={"embed.model_path": args.model, "embed.batch_size": args.batch_size,
                                   "embed.max_seq_length": args.max_seq_length}).embed
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    catalog = checked_catalog(args.catalog, out.with_name(f"{out.stem}_quarantine.parquet"))
    embedder = TextEmbedder.from_config(cfg)
    start = time.perf_counter()
    table = embed_catalog(catalog, embedder, max_chars=cfg.max_chars, progress=True)
    seconds = time.perf_counter() - start
    pq.write_table(table, out)
    print(f"embedded {table.num_rows} items ({embedder.dim}-d) in {seconds:.1f} s, "
          f"{table.num_rows / max(seconds, 1e-9):.0f} items/s -> {out}")
    return 0
