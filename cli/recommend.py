"""`rqsid recommend`: the catalog's champion (or any saved generator) answers user histories from the
command line, with item titles; `--input` answers a whole file of histories into a results file."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cli.options import add_config_flags, config_from
from rqsid import RqsidError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "recommend", help="top-k items for user histories from the catalog's champion generator (or --model)",
        description="Recommend the next items for a user history (item ids, oldest first) with the catalog's "
        "registered champion, decoded with the index it serves; print them with their titles. A search model "
        "also takes --query, embedded with the catalog's text model. History items the index does not know are "
        "skipped and counted; the history's own items are not recommended back (--include-history allows them).",
    )
    p.add_argument("--catalog", default="demo", help="catalog name (or source path) whose champion serves (default: demo)")
    p.add_argument("--model", metavar="PATH|URI",
                   help="a generator bundle folder, an MLflow model folder, or a models:/ or runs:/ URI "
                   "(default: models:/<catalog>-generator@champion)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--history", nargs="+", metavar="ID", help="one user's history, oldest first")
    what.add_argument("--input", type=Path, metavar="FILE",
                      help="parquet or JSONL of histories: column `history` (list of item ids), optional `user_id`, `query`")
    p.add_argument("--query", help="search text (query-conditioned models only)")
    p.add_argument("--out", type=Path, metavar="FILE", help="results of --input (.jsonl or .parquet; default: "
                   "<input stem>.recommendations.jsonl beside the input)")
    p.add_argument("--k", type=int, default=10, help="items per answer (default 10)")
    p.add_argument("--beam-size", type=int, help="default: the model's generator.beam_size (at least k)")
    p.add_argument("--include-history", action="store_true",
                   help="let an answer contain items of its own history (by default they are left out)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    add_config_flags(p)  # orchestration.mlflow_tracking_uri: the registry to read the champion from
    p.set_defaults(func=cmd_recommend)


def cmd_recommend(args: argparse.Namespace) -> int:
    bundle, source = load_model(args)
    retriever = bundle.retriever()
    if args.input is not None:
        return _answer_file(args, bundle, retriever, source)
    started = time.perf_counter()
    (answer,) = retriever.recommend([args.history], k=args.k, queries=[args.query] if args.query else None,
                                    beam_size=args.beam_size, exclude_history=not args.include_history)
    elapsed = time.perf_counter() - started
    titles = bundle.title_of(answer.item_ids)
    if args.json:
        answer_json = {"model": source, "index_version": bundle.index_version, **answer.as_dict(), "titles": titles}
        print(json.dumps(answer_json, indent=1))
        return 0
    print(f"{source}, index {bundle.index_version}: {len(answer.item_ids)} items for a history of {len(args.history)} "
          f"({answer.unknown_history_items} unknown to the index) in {elapsed * 1000:.0f} ms")
    if answer.note:
        print(f"note: {answer.note}")
    width = max((len(i) for i in answer.item_ids), default=7)
    for rank, (item, score, title) in enumerate(zip(answer.item_ids, answer.scores, titles, strict=True), 1):
        print(f"{rank:>3}  {item:<{width}}  {score:>9.4f}  {title[:90]}")
    return 0


def load_model(args: argparse.Namespace):
    """(bundle, a line naming it): a bundle folder directly, anything else through MLflow."""
    from rqsid.generator.bundle import is_bundle, load_bundle

    if args.model and Path(args.model).is_dir() and is_bundle(args.model):
        return load_bundle(args.model), f"bundle {args.model}"
    from mlflow.exceptions import MlflowException

    from rqsid.sources import catalog_name_of
    from tasks.serving import load_registered, model_name
    from tasks.tracking import Tracker

    Tracker(config_from(args).orchestration.mlflow_tracking_uri)  # points MLflow at the configured (or the home's) store
    uri = args.model or f"models:/{model_name(catalog_name_of(args.catalog))}@champion"
    try:
        return load_registered(uri), uri
    except MlflowException as err:
        hint = "" if args.model else "; run `rqsid nightly` (or `rqsid retrain`) for this catalog first"
        raise RqsidError(f"no model at {uri} ({str(err).splitlines()[0][:200]}){hint}") from None


def _read_histories(path: Path):
    import pandas as pd

    if not path.exists():
        raise RqsidError(f"input file {path} does not exist")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True, dtype=False)
    if "history" not in frame.columns:
        raise RqsidError(f"{path} has no `history` column (columns: {', '.join(map(str, frame.columns))})")
    return frame


def _answer_file(args: argparse.Namespace, bundle, retriever, source: str) -> int:
    import pandas as pd

    frame = _read_histories(args.input)
    histories = [[str(i) for i in h] if h is not None else [] for h in frame["history"]]
    queries = frame["query"].where(frame["query"].notna(), None).tolist() if "query" in frame.columns else None
    started = time.perf_counter()
    answers = retriever.recommend(histories, k=args.k, queries=queries, beam_size=args.beam_size,
                                  exclude_history=not args.include_history)
    elapsed = time.perf_counter() - started
    rows = pd.DataFrame([{**a.as_dict(), "titles": bundle.title_of(a.item_ids)} for a in answers])
    if "user_id" in frame.columns:
        rows.insert(0, "user_id", frame["user_id"].astype(str).to_numpy())
    out = args.out or args.input.with_name(f"{args.input.stem}.recommendations.jsonl")
    if out.suffix == ".parquet":
        rows.to_parquet(out, index=False)
    else:
        rows.to_json(out, orient="records", lines=True, force_ascii=False)
    unknown = int(rows["unknown_history_items"].sum())
    print(f"{source}, index {bundle.index_version}: {len(rows)} histories answered in {elapsed:.2f} s "
          f"({len(rows) / max(elapsed, 1e-9):.0f} users/s); {unknown} unknown history items skipped -> {out}")
    return 0
