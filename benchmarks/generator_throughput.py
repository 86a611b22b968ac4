"""Generator throughput on Beauty: training samples/s and beam-search queries/s at beam 20 and 50,
and the cost of the trie constraint against unconstrained beam search.

SIDs: residual k-means (3 x 256) on the Beauty item embeddings (throughput barely depends on how the
SIDs were made; k-means fits in seconds). Training: `train_generator` for --epochs epochs on the real
Beauty interactions; samples/s is the library's own figure (training targets per second of training
steps, validation excluded). Beam search: `recommend` over --users test users.

The trie constraint: rqsid.generator.beam_search has no unconstrained mode, so it is measured twice,
through two stand-ins for the trie (same public API, passed where the trie goes):
- a timing proxy around the real trie: beam search unchanged, time spent inside the trie's methods
  (allowed_mask, step, leaf_item) accumulated: the trie's share of constrained decoding;
- an all-allowed trie: every candidate token allowed at every depth, nothing ever complete (so every
  beam runs all depths and maps to no item): the same decoding without any constraint, the
  unconstrained baseline (its items are meaningless; only its time counts).

    .venv/bin/python benchmarks/generator_throughput.py
    .venv/bin/python benchmarks/generator_throughput.py --quick
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import header, log, md_table, new_result, write_result

from rqsid.config import GeneratorConfig, QuantizerConfig
from rqsid.generator import SidVocab, recommend, sequences_from_interactions, train_generator
from rqsid.generator.data import eval_batch
from rqsid.home import shared_data_dir
from rqsid.importers import import_beauty
from rqsid.lookup import align_embeddings
from rqsid.quantize import make_tokenizer
from rqsid.sids import assign_sids

EMBEDDINGS = Path("/work/scratch/emb/beauty.parquet")


class TimedTrie:
    """The real trie, with the seconds spent in each method accumulated."""

    def __init__(self, trie):
        self._trie, self.seconds = trie, defaultdict(float)

    def __getattr__(self, name):
        attr = getattr(self._trie, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed


class AllAllowedTrie:
    """Unconstrained stand-in: every token allowed everywhere, every beam stays live, none completes."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def allowed_mask(self, nodes, vocab_size=None):
        return np.ones((len(np.asarray(nodes).reshape(-1)), vocab_size or self.vocab_size), dtype=bool)

    def step(self, nodes, tokens):
        nodes, _ = np.broadcast_arrays(np.asarray(nodes, dtype=np.int64), np.asarray(tokens))
        return np.zeros(nodes.shape, dtype=np.int64)

    def leaf_item(self, nodes):
        return np.full(np.asarray(nodes).shape, -1, dtype=np.int64)


def sids_and_sequences(embeddings: Path, threads: int):
    from rqsid.embed import TextEmbedder, item_text, read_embeddings

    catalog, interactions = import_beauty(shared_data_dir() / "amazon-beauty-2014")
    if embeddings.exists():
        ids, X = read_embeddings(embeddings)
    else:
        log("no cached Beauty embeddings: embedding the catalog")
        ids, X = np.asarray(catalog.column("item_id").to_pylist(), dtype=object), TextEmbedder().embed(item_text(catalog))
    tok = make_tokenizer(QuantizerConfig(method="rkmeans", threads=threads)).fit(X, progress=False)
    table = assign_sids(ids, tok.encode(X), tok.codebook_sizes)
    vocab = SidVocab.from_sid_table(table)
    # the items' text embeddings in SID-table order: the default generator's item vectors include them
    return vocab, sequences_from_interactions(interactions, vocab), align_embeddings(vocab.item_ids, ids, X, str(embeddings))


def generator_config(epochs: int, threads: int) -> GeneratorConfig:
    fields = {"epochs": epochs, "eval_every": epochs, "valid_users": 500, "patience": 100}
    if "threads" in GeneratorConfig.model_fields:
        fields["threads"] = threads
    return GeneratorConfig(**fields)


def time_beam(trained, seqs, users: np.ndarray, beam: int, trie, ranked: bool = False) -> float:
    """Seconds to rank `users` at `beam`; ranked=True ranks as the config says (the default: the beam's and
    the item head's top items scored together), else by the SID beam alone (what the trie costs are about)."""
    batch = eval_batch(seqs, users, "test", trained.cfg.max_history, trained.buckets(seqs))
    ranking = {"rank_mix": trained.cfg.rank_mix, "candidates": trained.cfg.candidates} if ranked else {}
    start = time.perf_counter()
    recommend(trained.model, trie, batch, None, beam_size=beam, top_k=10, chunk=256, **ranking)
    return time.perf_counter() - start


def default_rows(trained, seqs, users: np.ndarray) -> list[dict[str, Any]]:
    """The default generator against the previous default (SID-only), trained and timed in this run."""
    previous = train_generator(seqs, trained.vocab, trained.cfg.sid_only(), progress=False)
    rows = []
    for name, model in (("default (hybrid)", trained), ("previous default (SID-only)", previous)):
        time_beam(model, seqs, users[:64], 20, model.trie, ranked=True)  # warm-up
        seconds = time_beam(model, seqs, users, 20, model.trie, ranked=True)
        rows.append({"generator": name, "samples_per_s": model.stats["samples_per_s"],
                     "parameters": sum(p.numel() for p in model.model.parameters()), "beam20_qps": len(users) / seconds})
        log(f"{name}: {rows[-1]['samples_per_s']:.0f} training samples/s, {rows[-1]['beam20_qps']:.1f} queries/s at beam 20")
    for key in ("samples_per_s", "beam20_qps"):
        rows[0][f"{key}_ratio"] = rows[0][key] / rows[1][key]
    return rows


def beam_rows(trained, seqs, users: np.ndarray, beams: list[int]) -> list[dict[str, Any]]:
    rows = []
    time_beam(trained, seqs, users[:64], beams[0], trained.trie)  # warm-up: first-call allocations
    for beam in beams:
        timed = TimedTrie(trained.trie)
        constrained = time_beam(trained, seqs, users, beam, timed)
        free = time_beam(trained, seqs, users, beam, AllAllowedTrie(trained.trie.vocab_size))
        trie_s = sum(timed.seconds.values())
        row = {"beam": beam, "users": len(users), "constrained_s": constrained, "constrained_qps": len(users) / constrained,
               "unconstrained_s": free, "unconstrained_qps": len(users) / free, "constraint_cost": constrained / free,
               "trie_s": trie_s, "trie_share": trie_s / constrained,
               **{f"trie_{name}_s": s for name, s in timed.seconds.items()}}
        log(f"beam {beam}: {row['constrained_qps']:.1f} q/s constrained, {row['unconstrained_qps']:.1f} unconstrained "
            f"(x{row['constraint_cost']:.2f}); trie methods {trie_s:.2f} s = {row['trie_share']:.1%}")
        rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    t = result["training"]
    notes = [f"Beauty: {result['n_items']} items, {result['n_users']} users, vocab {result['vocab_size']}, "
             f"SIDs of up to {result['sid_len']} tokens (residual k-means 3 x 256 + dedup + eos); torch threads "
             f"{result['threads']}. Unconstrained = the same beam search with an all-allowed stand-in for the trie "
             "(beam_search has no unconstrained mode). 'constrained / unconstrained' is the whole price of the "
             "constraint (trie look-ups + masking + the early stop it allows); 'trie share' is the time inside the "
             "trie's own methods."]
    lines = header("Generator throughput: training and constrained beam search", result, notes)
    lines += ["## Training", "",
              f"{t['samples_per_s']:.0f} training samples/s ({t['train_samples']} samples in {t['train_seconds']:.1f} s of "
              f"training steps over {t['epochs']} epoch(s); batch {result['batch_size']} users, "
              f"{result['n_parameters']:,} parameters).", "", "## Beam search", ""]
    lines += md_table(result["beam"], [("beam", "beam", "d"), ("users", "users", "d"),
                                       ("queries/s constrained", "constrained_qps", ".1f"),
                                       ("queries/s unconstrained", "unconstrained_qps", ".1f"),
                                       ("constrained / unconstrained time", "constraint_cost", ".2f"),
                                       ("trie s", "trie_s", ".2f"), ("trie share", "trie_share", ".1%"),
                                       ("allowed_mask s", "trie_allowed_mask_s", ".2f"), ("step s", "trie_step_s", ".2f"),
                                       ("leaf_item s", "trie_leaf_item_s", ".2f")])
    lines += ["", "The rows above decode by the SID beam alone. The default generator against the previous default, "
              "both trained above for the same epochs and ranked as each is configured (default: the beam's 20 items "
              "and the item head's top 20 scored together), same users, same run:", ""]
    lines += md_table(result["defaults"], [("generator", "generator", ""), ("parameters", "parameters", ",d"),
                                           ("training samples/s", "samples_per_s", ".0f"),
                                           ("queries/s at beam 20", "beam20_qps", ".1f"),
                                           ("samples/s ratio", "samples_per_s_ratio", ".2f"),
                                           ("queries/s ratio", "beam20_qps_ratio", ".2f")])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embeddings", type=Path, default=EMBEDDINGS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--users", type=int, default=2000, help="test users per beam-search timing")
    parser.add_argument("--beams", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 300 users")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.users = 1, 300
    torch.set_num_threads(args.threads)
    vocab, seqs, features = sids_and_sequences(args.embeddings, args.threads)
    cfg = generator_config(args.epochs, args.threads)
    log(f"training {args.epochs} epoch(s)")
    trained = train_generator(seqs, vocab, cfg, progress=False, log=lambda m: log("  " + m), item_features=features)
    users = np.sort(np.random.default_rng(0).choice(seqs.n_users, min(args.users, seqs.n_users), replace=False))
    result = new_result(threads=args.threads, quick=args.quick, n_items=vocab.n_items, n_users=seqs.n_users,
                        vocab_size=vocab.vocab_size, sid_len=vocab.max_len, batch_size=cfg.batch_size,
                        n_parameters=sum(p.numel() for p in trained.model.parameters()),
                        training=trained.stats, beam=beam_rows(trained, seqs, users, args.beams),
                        defaults=default_rows(trained, seqs, users))
    write_result("generator_throughput" + ("_quick" if args.quick else ""), result, markdown(result))


if __name__ == "__main__":
    main()
