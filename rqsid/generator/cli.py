"""`rqsid train` and `rqsid evaluate`: the generative retriever from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rqsid import RqsidError


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train the generative retriever on user histories (leave-one-out) and save it",
        description="Train the generative retriever (SID generation with constrained beam search) on "
        "leave-one-out user histories, early-stopping on validation NDCG@10; prints test metrics.",
    )
    _common(train)
    train.add_argument("--out", required=True, type=Path, help="folder for model.pt + meta.json")
    train.add_argument("--config", type=Path, help="config file (.toml/.json/.yaml)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. generator.epochs=50")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="evaluate a trained generative retriever (Recall/NDCG@5/10, head/tail)",
        description="Rank all items for each user with constrained beam search and print Recall/NDCG@5/10, "
        "overall and by head/tail layer-2 token of the target.",
    )
    _common(evaluate)
    evaluate.add_argument("--model", required=True, type=Path, help="folder written by `rqsid train`")
    evaluate.add_argument("--split", choices=("test", "valid"), default="test")
    evaluate.add_argument("--beam-size", type=int, help="default: the model's generator.beam_size")
    evaluate.add_argument("--json", type=Path, help="also write the metrics here")
    evaluate.set_defaults(func=run_evaluate)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interactions", required=True, type=Path, help="canonical interactions parquet")
    parser.add_argument("--sids", required=True, type=Path, help="SID table parquet (or a reference *.index.json)")
    parser.add_argument("--id-offset", type=int, default=0, help="for reference *.index.json: item id = key + offset (Beauty: 1)")
    parser.add_argument("--unpruned-sids", type=Path, help="unpruned SID table for the head/tail split (default: --sids)")
    parser.add_argument("--catalog", type=Path, help="canonical catalog parquet: derive search queries from it (query variant)")
    parser.add_argument("--no-progress", action="store_true")


def _read_table(path: Path, what: str):
    if not path.exists():
        raise RqsidError(f"{what} file {path} does not exist")
    return pq.read_table(path)


def _load_inputs(args, use_query: bool, seed: int, embed_cfg):
    """(vocab, sequences [with embedded queries], head-item mask)."""
    from rqsid.generator.data import SidVocab, derive_queries, embed_queries, sequences_from_interactions
    from rqsid.generator.evaluate import head_item_mask
    from rqsid.sids import load_sids

    table = load_sids(args.sids, id_offset=args.id_offset)
    vocab = SidVocab.from_sid_table(table)
    seqs = sequences_from_interactions(_read_table(args.interactions, "interactions"), vocab)
    if use_query:
        if seqs.query_ids is None:
            if args.catalog is None:
                raise RqsidError("the query variant needs --catalog (no logged queries in the interactions)")
            seqs = derive_queries(seqs, vocab, _read_table(args.catalog, "catalog"), seed=seed)
        from rqsid.embed import TextEmbedder

        embedder = TextEmbedder(embed_cfg.model_path, batch_size=embed_cfg.batch_size, max_seq_length=embed_cfg.max_seq_length)
        seqs = embed_queries(seqs, embedder)
    unpruned = load_sids(args.unpruned_sids, id_offset=args.id_offset) if args.unpruned_sids else table
    head = head_item_mask(unpruned, vocab) if (np.asarray(unpruned.codes)[:, 1] >= 0).all() else None
    if head is None:
        print("note: the SIDs are pruned at layer 2; pass --unpruned-sids for the head/tail split")
    return vocab, seqs, head


def run_train(args) -> int:
    from rqsid.config import load_config, parse_override
    from rqsid.generator.evaluate import format_table
    from rqsid.generator.train import evaluate_split, save_generator, train_generator

    overrides = dict(parse_override(text) for text in args.set)
    if args.catalog is not None:
        overrides.setdefault("generator.use_query", True)
    cfg = load_config(args.config, overrides)
    vocab, seqs, head = _load_inputs(args, cfg.generator.use_query, cfg.generator.seed, cfg.embed)
    trained = train_generator(seqs, vocab, cfg.generator, out_dir=args.out, progress=not args.no_progress)
    metrics, _ = evaluate_split(trained, seqs, "test", head, progress=not args.no_progress)
    trained.stats["test"] = metrics
    save_generator(args.out, trained)
    print(f"best validation epoch {trained.best.get('epoch')}: {json.dumps(trained.best.get('valid'))}")
    print(f"training {trained.stats['train_seconds']} s, {trained.stats['samples_per_s']} samples/s; saved to {args.out}")
    print(format_table({"generator" + (" (query)" if cfg.generator.use_query else ""): metrics}))
    return 0


def run_evaluate(args) -> int:
    from rqsid.config import load_config
    from rqsid.generator.data import SidVocab
    from rqsid.generator.evaluate import format_table
    from rqsid.generator.train import evaluate_split, load_generator
    from rqsid.sids import load_sids

    vocab = SidVocab.from_sid_table(load_sids(args.sids, id_offset=args.id_offset))
    trained = load_generator(args.model, vocab)
    _, seqs, head = _load_inputs(args, trained.cfg.use_query, trained.cfg.seed, load_config().embed)
    metrics, _ = evaluate_split(trained, seqs, args.split, head, beam_size=args.beam_size, progress=not args.no_progress)
    name = "generator" + (" (query)" if trained.cfg.use_query else "")
    print(f"{args.split} split, {seqs.n_users} users, beam {args.beam_size or trained.cfg.beam_size}")
    print(format_table({name: metrics}))
    if args.json:
        args.json.write_text(json.dumps({"split": args.split, name: metrics}, indent=1))
    return 0
