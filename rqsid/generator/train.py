"""Training of the generative retriever: leave-one-out, every-position loss, early stopping on the
validation NDCG@10 of the real constrained beam search, best-model checkpointing, a time budget.

Save format (a folder): `model.pt` (state dict) and `meta.json` (generator config, vocabulary
fingerprint, query settings, training history and the best validation metrics).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rqsid import RqsidError
from rqsid.config import GeneratorConfig
from rqsid.generator.beam import DepthMasks, depth_masks, recommend
from rqsid.generator.data import Sequences, SidVocab, eval_batch, item_counts_before, train_batch, user_bucket
from rqsid.generator.evaluate import split_metrics
from rqsid.generator.model import GenerativeRetriever
from rqsid.quantize.base import fit_context
from rqsid.trie import SidTrie

FORMAT_VERSION = 1
SELECTED_FILE = "selected.pt"  # after a refit, beside model.pt: the model chosen on validation


@dataclass
class TrainedGenerator:
    model: GenerativeRetriever
    vocab: SidVocab
    trie: SidTrie
    cfg: GeneratorConfig
    query_dim: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    selected_model: GenerativeRetriever | None = None  # after a refit: the early-stopped model it replaced

    def selection(self) -> TrainedGenerator:
        """The early-stopped model that was chosen on validation: after a refit, the model before it (the refit
        has trained on the validation targets, so only this one can be judged on validation cases)."""
        if self.selected_model is None:
            return self
        return replace(self, model=self.selected_model, selected_model=None)

    def buckets(self, seqs: Sequences) -> np.ndarray | None:
        return user_bucket(seqs.user_ids, self.cfg.user_buckets) if self.cfg.user_buckets > 1 else None


def build_trie(vocab: SidVocab) -> SidTrie:
    return SidTrie.build(vocab.tokens, vocab.vocab_size)


def evaluate_split(
    trained: TrainedGenerator,
    seqs: Sequences,
    split: str,
    head_items: np.ndarray | None = None,
    users: np.ndarray | None = None,
    beam_size: int | None = None,
    progress: bool = False,
) -> tuple[dict, np.ndarray]:
    """Metrics ({"all", "head", "tail"} -> Recall/NDCG@5/10) and the top-10 item rows per user. The valid split
    is always answered by the model chosen on it (`selection`): a refit has trained on its targets."""
    if split == "valid":
        trained = trained.selection()
    cfg = trained.cfg
    users = np.arange(seqs.n_users) if users is None else users
    batch = eval_batch(seqs, users, split, cfg.max_history, trained.buckets(seqs))
    if cfg.use_query and not seqs.has_queries:
        raise RqsidError("this model is query-conditioned: the sequences need embedded queries")
    ranked, _ = recommend(
        trained.model, trained.trie, batch, seqs.query_vectors if cfg.use_query else None,
        beam_size=beam_size or cfg.beam_size, top_k=10, progress=progress,
        rank_mix=cfg.rank_mix, candidates=cfg.candidates,
    )
    return split_metrics(ranked, batch.targets, head_items), ranked


class _Loss:
    """Trie-constrained cross-entropy of every SID step (with a real choice) of every target in a batch."""

    def __init__(self, model: GenerativeRetriever, masks: list[DepthMasks], cfg: GeneratorConfig, query_vectors):
        self.model, self.masks, self.cfg = model, masks, cfg
        self.query_vectors = torch.from_numpy(query_vectors) if query_vectors is not None else None

    def __call__(self, batch) -> tuple[torch.Tensor, int]:
        model = self.model
        targets = torch.from_numpy(batch.targets)
        buckets = torch.from_numpy(batch.user_buckets) if batch.user_buckets is not None else None
        hidden = model.encode(torch.from_numpy(batch.history), buckets)
        chosen = targets >= 0
        items = targets[chosen]
        query = None
        if self.query_vectors is not None:
            qid = torch.from_numpy(batch.queries)[chosen]
            query = self.query_vectors[qid.clamp_min(0)] * (qid >= 0).unsqueeze(-1)
        context = model.context(hidden[chosen], query)
        state = model.head_start(context)
        tokens = model.item_tokens[items]
        total, count = state.new_zeros(()), 0
        for depth, m in enumerate(self.masks):
            rows = m.choice[items]
            if rows.any():
                sel = items[rows]
                allowed = m.table[m.index[sel]]
                logp = torch.log_softmax(model.head_logits(state[rows], depth).masked_fill(~allowed, float("-inf")), dim=-1)
                total = total + _smoothed_nll(logp, m.target[sel], allowed, self.cfg.label_smoothing)
                count += int(rows.sum())
            if depth + 1 < len(self.masks):
                state = model.head_advance(state, tokens[:, depth].clamp_min(0), depth)
        loss = total / max(count, 1)
        if self.cfg.item_loss_weight > 0:
            item_ce = F.cross_entropy(model.item_logits(context), items)
            loss = loss + self.cfg.item_loss_weight * item_ce
        return loss, int(items.numel())


def _smoothed_nll(logp: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor, eps: float) -> torch.Tensor:
    """Summed NLL; with eps > 0, label smoothing spread over the allowed tokens only."""
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    if eps > 0:
        uniform = -logp.masked_fill(~allowed, 0.0).sum(1) / allowed.sum(1)
        nll = (1 - eps) * nll + eps * uniform
    return nll.sum()


def _make_optimizer(model: GenerativeRetriever, cfg: GeneratorConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "emb" in name or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def train_generator(
    seqs: Sequences,
    vocab: SidVocab,
    cfg: GeneratorConfig,
    out_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    item_features: np.ndarray | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainedGenerator:
    """Train on the training parts of `seqs`, early-stopping on validation NDCG@10 (beam search).

    The returned model holds the best validation checkpoint; with `out_dir` it is also saved there
    every time validation improves. `on_epoch` receives each epoch's history record as it is made
    (loss, and validation metrics on evaluated epochs), e.g. to plot a live learning curve.
    """
    if cfg.use_query and not seqs.has_queries:
        raise RqsidError("generator.use_query is set but the sequences have no embedded queries")
    with fit_context(cfg.seed, cfg.threads):  # seeded, deterministic kernels, the caller's RNG restored after
        return _train(seqs, vocab, cfg, out_dir, progress, log, item_features, on_epoch)


def _train(seqs, vocab, cfg, out_dir, progress, log, item_features, on_epoch=None) -> TrainedGenerator:
    query_dim = seqs.query_vectors.shape[1] if cfg.use_query else 0
    if cfg.item_text and item_features is None:
        raise RqsidError("generator.item_text is on but no item features were given: pass the items' text embeddings "
                         "(SID-table row order), or set generator.item_text=false")
    text = torch.from_numpy(np.ascontiguousarray(item_features, dtype=np.float32)) if cfg.item_text else None
    if text is not None and len(text) != vocab.n_items:
        raise RqsidError(f"item features have {len(text)} rows for {vocab.n_items} items")
    model = GenerativeRetriever(vocab, cfg, query_dim, text)
    _freeze_unseen_ids(model, seqs, holdout=2)
    trained = TrainedGenerator(model, vocab, build_trie(vocab), cfg, query_dim)
    masks = depth_masks(trained.trie, vocab.tokens, vocab.vocab_size)
    loss_fn = _Loss(model, masks, cfg, seqs.query_vectors if cfg.use_query else None)
    optimizer = _make_optimizer(model, cfg)
    buckets = trained.buckets(seqs)
    rng = np.random.default_rng(cfg.seed)
    train_users = np.flatnonzero(seqs.lengths >= 4)  # >= 2 training items: at least one target
    valid_users = _validation_users(seqs, cfg, rng)
    log(f"training on {len(train_users)} users ({int(np.clip(seqs.lengths[train_users] - 3, 0, cfg.max_history).sum())} targets/epoch), "
        f"validating on {len(valid_users)} of {seqs.n_users} users, vocab {vocab.vocab_size}, {sum(p.numel() for p in model.parameters())} parameters")

    deadline = time.perf_counter() + cfg.max_train_minutes * 60
    started = time.perf_counter()
    best_score, best_state, stale, lr_scale = -1.0, None, 0, 1.0
    train_seconds, samples = 0.0, 0
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        record = {"epoch": epoch, "lr_scale": lr_scale}
        record["loss"], n, step = _run_epoch(model, loss_fn, optimizer, cfg, seqs, train_users, buckets, rng, step, lr_scale,
                                             holdout=2, progress=progress, label=f"epoch {epoch}")
        samples += n
        train_seconds += time.perf_counter() - t0
        record["elapsed_s"] = round(time.perf_counter() - started, 1)
        out_of_time = selection_out_of_time(deadline, epoch, train_seconds, cfg.refit_on_valid)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or out_of_time:
            t1 = time.perf_counter()
            metrics, _ = evaluate_split(trained, seqs, "valid", users=valid_users)
            record["valid"] = metrics["all"]
            record["valid_s"] = round(time.perf_counter() - t1, 1)
            score = metrics["all"]["ndcg@10"] + 1e-3 * metrics["all"]["recall@10"]
            if score > best_score:
                best_score, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
                trained.best = {"epoch": epoch, "valid": metrics["all"]}
                if out_dir is not None:
                    _finish_stats(trained, train_seconds, samples, started)
                    save_generator(out_dir, trained)
            else:
                stale += 1
                if stale % cfg.lr_decay_patience == 0:  # a plateau: halve the learning rate
                    lr_scale *= cfg.lr_decay
            log(f"epoch {epoch}: loss {record['loss']:.4f}  valid R@10 {metrics['all']['recall@10']:.4f} "
                f"N@10 {metrics['all']['ndcg@10']:.4f}  ({record['elapsed_s']:.0f}s)")
        trained.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if stale >= cfg.patience:
            log(f"early stop: no validation gain in {cfg.patience} evaluations")
            break
        if out_of_time:
            log(f"time budget of {cfg.max_train_minutes} min reached" + (" (the rest is kept for the refit)" if cfg.refit_on_valid else ""))
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    refit = None
    if cfg.refit_on_valid and trained.best:
        seconds, refit = _refit(trained, seqs, cfg, item_features_tensor=text, buckets=buckets, deadline=deadline,
                                epoch_seconds=train_seconds / len(trained.history), progress=progress, log=log)
        train_seconds += seconds
    _finish_stats(trained, train_seconds, samples, started, refit)
    if out_dir is not None:
        save_generator(out_dir, trained)
    return trained


REFIT_EPOCH_COST = 1.2  # a refit epoch against a selection epoch: one more target per user, a margin for noise


def selection_out_of_time(deadline: float, epochs: int, train_seconds: float, refit: bool) -> bool:
    """Whether the selection run must stop after its epoch `epochs`. Without a refit: at the deadline. With
    one: when one more epoch would leave too little time to refit all of them, so the refit fits whichever
    epoch turns out best."""
    if not refit:
        return time.perf_counter() > deadline
    epoch_seconds = train_seconds / epochs
    return not refit_fits(deadline - epoch_seconds, epochs + 1, epoch_seconds)


def refit_fits(deadline: float, epochs: int, epoch_seconds: float) -> bool:
    return time.perf_counter() + epochs * epoch_seconds * REFIT_EPOCH_COST <= deadline


def _run_epoch(model, loss_fn, optimizer, cfg, seqs, users, buckets, rng, step, lr_scale, holdout, progress, label):
    """One pass over the users' training windows; returns (mean loss, targets seen, optimiser steps so far)."""
    model.train()
    losses, samples = [], 0
    bar = tqdm(_length_bucketed_batches(users, seqs.lengths, cfg.batch_size, rng), desc=label, disable=not progress, leave=False)
    for batch_users in bar:
        _set_lr(optimizer, cfg, step, lr_scale)
        loss, n = loss_fn(train_batch(seqs, batch_users, cfg.max_history, buckets, rng, holdout=holdout))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        samples += n
        step += 1
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return float(np.mean(losses)), samples, step


def _freeze_unseen_ids(model: GenerativeRetriever, seqs, holdout: int) -> None:
    """Per-item embeddings of the items that never occur in the training windows (all but each user's last
    `holdout` items) are set to zero and get no gradient: trained only as negatives of the item-level softmax
    they would learn to push the item away (new items then never surface: cold start measured 0 of 1,059
    hits); at zero such an item scores by its SID tokens and text, exactly as a new item does when
    `retriever.bind` serves a newer index. Once per model, before its first step."""
    if model.id_emb is None:
        return
    split = "test" if holdout == 1 else "train"
    unseen = torch.from_numpy(np.flatnonzero(item_counts_before(seqs, model.n_items, split) == 0))
    if len(unseen):
        with torch.no_grad():
            model.id_emb.weight[unseen] = 0.0
        model.id_emb.weight.register_hook(lambda grad: grad.index_fill(0, unseen, 0.0))


def _refit(trained: TrainedGenerator, seqs, cfg, item_features_tensor, buckets, deadline, epoch_seconds, progress, log):
    """Retrain from scratch with the validation targets as training targets too, for the chosen number
    of epochs and the same learning-rate history: the served model then learns from each user's most
    recent interaction as well. Validation figures stay those of the selection run (the refit model has
    seen the validation targets). Skipped, with a log line, when it would overrun the time budget."""
    epochs = trained.best["epoch"]
    if not refit_fits(deadline, epochs, epoch_seconds):
        log(f"refit on train + validation skipped: {epochs} epochs would overrun the time budget")
        return 0.0, {"done": False, "reason": "time budget"}
    torch.manual_seed(cfg.seed)
    model = GenerativeRetriever(trained.vocab, cfg, trained.query_dim, item_features_tensor)
    _freeze_unseen_ids(model, seqs, holdout=1)
    masks = depth_masks(trained.trie, trained.vocab.tokens, trained.vocab.vocab_size)
    loss_fn = _Loss(model, masks, cfg, seqs.query_vectors if cfg.use_query else None)
    optimizer = _make_optimizer(model, cfg)
    rng = np.random.default_rng(cfg.seed + 2)
    users = np.flatnonzero(seqs.lengths >= 3)  # the training part now ends at the validation target
    t0, step = time.perf_counter(), 0
    for record in trained.history[:epochs]:
        loss, _, step = _run_epoch(model, loss_fn, optimizer, cfg, seqs, users, buckets, rng, step, record["lr_scale"],
                                   holdout=1, progress=progress, label=f"refit {record['epoch']}/{epochs}")
    log(f"refit on train + validation targets: {epochs} epochs, loss {loss:.4f}")
    model.eval()
    trained.selected_model, trained.model = trained.model, model
    return time.perf_counter() - t0, {"done": True, "epochs": epochs}


def _length_bucketed_batches(users: np.ndarray, lengths: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random batches of users with similar history lengths (less padding to compute), in random order:
    shuffle, sort by length inside pools of 32 batches, cut, shuffle the batches."""
    order = rng.permutation(users)
    pool = 32 * size
    for s in range(0, len(order), pool):
        chunk = order[s : s + pool]
        order[s : s + pool] = chunk[np.argsort(lengths[chunk], kind="stable")]
    batches = [order[s : s + size] for s in range(0, len(order), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _set_lr(optimizer: torch.optim.Optimizer, cfg: GeneratorConfig, step: int, plateau_scale: float) -> None:
    """Linear warm-up, then constant until validation plateaus (each plateau multiplies it by lr_decay).
    The schedule depends on steps and validation only, never on the clock, so runs are reproducible."""
    scale = min(1.0, (step + 1) / max(cfg.warmup_steps, 1)) * plateau_scale
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * scale


def _validation_users(seqs: Sequences, cfg: GeneratorConfig, rng: np.random.Generator) -> np.ndarray:
    """A fixed random subsample of users for early stopping (all users when valid_users is 0)."""
    if cfg.valid_users <= 0 or cfg.valid_users >= seqs.n_users:
        return np.arange(seqs.n_users)
    return np.sort(np.random.default_rng(cfg.seed + 1).choice(seqs.n_users, cfg.valid_users, replace=False))


def _finish_stats(trained: TrainedGenerator, train_seconds: float, samples: int, started: float, refit: dict | None = None) -> None:
    trained.stats = {
        **({"refit": refit} if refit else {}),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "train_samples": samples,
        "samples_per_s": round(samples / max(train_seconds, 1e-9), 1),
        "epochs": len(trained.history),
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- save / load


def save_generator(out_dir: str | Path, trained: TrainedGenerator) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(trained.model.state_dict(), out / "model.pt")
    if trained.selected_model is not None:
        torch.save(trained.selected_model.state_dict(), out / SELECTED_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": trained.cfg.model_dump(),
        "query_dim": trained.query_dim,
        "vocab": {"fingerprint": trained.vocab.fingerprint(), "n_items": trained.vocab.n_items,
                  "vocab_size": trained.vocab.vocab_size, "sid_len": trained.vocab.max_len},
        "best": trained.best,
        "stats": trained.stats,
        "history": trained.history,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


def load_generator(model_dir: str | Path, vocab: SidVocab) -> TrainedGenerator:
    """A saved generator; `vocab` must be the exact SID assignment it was trained on."""
    path = Path(model_dir)
    if not (path / "meta.json").exists() or not (path / "model.pt").exists():
        raise RqsidError(f"{path} holds no saved generator (model.pt + meta.json)")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise RqsidError(f"{path}: generator format {meta.get('format_version')} is not {FORMAT_VERSION}")
    if meta["vocab"]["fingerprint"] != vocab.fingerprint():
        raise RqsidError(f"{path}: the model was trained on other SIDs ({meta['vocab']['n_items']} items) than the given table ({vocab.n_items} items)")
    cfg = GeneratorConfig.model_validate(meta["config"])

    def model_in(file: Path) -> GenerativeRetriever:
        state = torch.load(file, weights_only=True)
        model = GenerativeRetriever(vocab, cfg, meta["query_dim"], state.get("item_text"))
        model.load_state_dict(state)
        return model.eval()

    selected = model_in(path / SELECTED_FILE) if (path / SELECTED_FILE).exists() else None
    return TrainedGenerator(model_in(path / "model.pt"), vocab, build_trie(vocab), cfg, meta["query_dim"], meta["history"],
                            meta["best"], meta["stats"], selected)
