"""`rqsid train` and `rqsid evaluate`: the generative retriever from the command line. Queries (the search
variant) are embedded with the config's embed section, exactly as the items were."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.options import add_config_flags, config_from
from rqsid import RqsidError


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train the generative retriever on user histories (leave-one-out) and save it",
        description="Train the generative retriever (SID generation with constrained beam search) on "
        "leave-one-out user histories, early-stopping on validation NDCG@10; prints test metrics.",
    )
    _common(train)
    train.add_argument("--out", required=True, type=Path, help="folder for model.pt + meta.json")
    train.add_argument("--embeddings", type=Path,
                       help="item embeddings parquet (`rqsid embed`): needed when generator.item_text is on (the default)")
    add_config_flags(train)
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
    add_config_flags(evaluate)  # its embed section embeds the queries
    evaluate.set_defaults(func=run_evaluate)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interactions", required=True, type=Path, help="canonical interactions parquet")
    parser.add_argument("--sids", required=True, type=Path, help="SID table parquet (or a reference *.index.json)")
    parser.add_argument("--id-offset", type=int, default=0, help="for reference *.index.json: item id = key + offset (Beauty: 1)")
    parser.add_argument("--unpruned-sids", type=Path, help="unpruned SID table for the head/tail split (default: --sids)")
    parser.add_argument("--catalog", type=Path, help="canonical catalog parquet: derive search queries from it (query variant)")
    parser.add_argument("--no-progress", action="store_true")


def _load_inputs(args, use_query: bool, seed: int, embed_cfg):
    """(vocab, sequences [with embedded queries], head-item mask)."""
    import numpy as np

    from cli.data import checked_catalog
    from rqsid.catalog import read_raw_interactions
    from rqsid.generator.data import SidVocab, derive_queries, embed_queries, sequences_from_interactions
    from rqsid.generator.evaluate import head_item_mask
    from rqsid.sids import load_sids

    table = load_sids(args.sids, id_offset=args.id_offset)
    vocab = SidVocab.from_sid_table(table)
    seqs = sequences_from_interactions(read_raw_interactions(args.interactions), vocab)
    if use_query:
        if seqs.query_ids is None:
            if args.catalog is None:
                raise RqsidError("the query variant needs --catalog (no logged queries in the interactions)")
            seqs = derive_queries(seqs, vocab, checked_catalog(args.catalog, None), seed=seed)
        from rqsid.embed import TextEmbedder

        seqs = embed_queries(seqs, TextEmbedder.from_config(embed_cfg))
    unpruned = load_sids(args.unpruned_sids, id_offset=args.id_offset) if args.unpruned_sids else table
    head = head_item_mask(unpruned, vocab) if (np.asarray(unpruned.codes)[:, 1] >= 0).all() else None
    if head is None:
        print("note: the SIDs are pruned at layer 2; pass --unpruned-sids for the head/tail split")
    return vocab, seqs, head


def run_train(args) -> int:
    from rqsid.generator.evaluate import format_table
    from rqsid.generator.train import evaluate_split, save_generator, train_generator

    # a catalog to derive queries from means the query variant, unless --set says otherwise
    set_here = {text.partition("=")[0].strip() for text in args.overrides}
    query = args.catalog is not None and "generator.use_query" not in set_here
    cfg = config_from(args, extra={"generator.use_query": True if query else None})
    vocab, seqs, head = _load_inputs(args, cfg.generator.use_query, cfg.generator.seed, cfg.embed)
    features = _item_features(args.embeddings, vocab) if cfg.generator.item_text else None
    trained = train_generator(seqs, vocab, cfg.generator, out_dir=args.out, progress=not args.no_progress, item_features=features)
    metrics, _ = evaluate_split(trained, seqs, "test", head, progress=not args.no_progress)
    trained.stats["test"] = metrics
    save_generator(args.out, trained)
    print(f"best validation epoch {trained.best.get('epoch')}: {json.dumps(trained.best.get('valid'))}")
    if trained.stats.get("refit", {}).get("done"):
        epochs = trained.stats["refit"]["epochs"]
        print(f"refitted on train + validation targets for {epochs} epochs: the test figures are the refit's")
    print(f"training {trained.stats['train_seconds']} s, {trained.stats['samples_per_s']} samples/s; saved to {args.out}")
    print(format_table({"generator" + (" (query)" if cfg.generator.use_query else ""): metrics}))
    return 0


def _item_features(path: Path | None, vocab):
    """The items' text embeddings in the SID table's row order (the item-level head composes item vectors from them)."""
    from rqsid.embed import read_embeddings
    from rqsid.lookup import align_embeddings

    if path is None:
        raise RqsidError("generator.item_text is on: pass --embeddings (from `rqsid embed`), or --set generator.item_text=false")
    if not path.exists():
        raise RqsidError(f"embeddings file {path} does not exist")
    ids, X = read_embeddings(path)
    return align_embeddings(vocab.item_ids, ids, X, str(path))


def run_evaluate(args) -> int:
    from rqsid.generator.data import SidVocab
    from rqsid.generator.evaluate import format_table
    from rqsid.generator.train import evaluate_split, load_generator
    from rqsid.sids import load_sids

    vocab = SidVocab.from_sid_table(load_sids(args.sids, id_offset=args.id_offset))
    trained = load_generator(args.model, vocab)
    if args.split == "valid" and trained.selected_model is not None:  # evaluate_split answers with the selection model
        print("valid split: the model chosen on validation before the refit (the refit has trained on these targets)")
    _, seqs, head = _load_inputs(args, trained.cfg.use_query, trained.cfg.seed, config_from(args).embed)
    metrics, _ = evaluate_split(trained, seqs, args.split, head, beam_size=args.beam_size, progress=not args.no_progress)
    name = "generator" + (" (query)" if trained.cfg.use_query else "")
    print(f"{args.split} split, {seqs.n_users} users, beam {args.beam_size or trained.cfg.beam_size}")
    print(format_table({name: metrics}))
    if args.json:
        args.json.write_text(json.dumps({"split": args.split, name: metrics}, indent=1))
    return 0
