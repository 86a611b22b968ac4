"""SASRec (Kang & McAuley, ICDM 2018) with full-softmax cross-entropy: the peer the generator is
measured against. Item-id embeddings (tied input/output), learned positions, causal self-attention,
and the loss at every position over ALL items (the "SASRec + CE" that recent papers show beats the
original's sampled BCE). It uses rqsid's own leave-one-out split, batches and metrics
(`rqsid.generator.data`, `rqsid.generator.evaluate`), so both models see exactly the same users,
histories (the last `max_history` items), targets and ranking over all items.

Early stopping on validation NDCG@10 (the same subsample of validation users and the same rule as
the generator), best checkpoint kept, a wall-clock budget.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rqsid.generator.data import Sequences, eval_batch, train_batch
from rqsid.generator.evaluate import split_metrics
from rqsid.generator.train import _length_bucketed_batches, _validation_users, refit_fits, selection_out_of_time
from rqsid.quantize.base import fit_context


@dataclass(frozen=True)
class SASRecConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 1
    ffn_mult: int = 1  # the original's point-wise feed-forward is d wide
    dropout: float = 0.3
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_history: int = 20
    epochs: int = 400
    eval_every: int = 2
    patience: int = 10
    lr_decay: float = 0.5  # the generator's schedule: the rate halves after lr_decay_patience evaluations without gain
    lr_decay_patience: int = 3
    refit_on_valid: bool = True  # as generator.refit_on_valid (its default: the peer gets the same refit)
    valid_users: int = 5000
    max_train_minutes: float = 90.0
    seed: int = 0


class SASRec(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        d = cfg.d_model
        self.pad = n_items
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.pos_emb = nn.Embedding(cfg.max_history, d)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d, cfg.n_heads, cfg.ffn_mult * d, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.register_buffer(
            "causal", torch.triu(torch.full((cfg.max_history, cfg.max_history), float("-inf")), 1), persistent=False
        )
        nn.init.normal_(self.item_emb.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_emb.weight[self.pad].zero_()

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """(B, P) item rows, -1 = padding after the history -> (B, P, d) causal states."""
        P = history.shape[1]
        x = self.item_emb(torch.where(history >= 0, history, self.pad)) * self.item_emb.embedding_dim**0.5
        x = self.drop(x + self.pos_emb.weight[:P])
        return self.norm(self.encoder(x, mask=self.causal[:P, :P], is_causal=True))

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_emb.weight[: self.pad].T


@dataclass
class TrainedSASRec:
    model: SASRec
    cfg: SASRecConfig
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    selected_model: SASRec | None = None  # after a refit: the early-stopped model it replaced


@torch.no_grad()
def rank(model: SASRec, seqs: Sequences, split: str, users: np.ndarray | None = None, k: int = 10, chunk: int = 2048):
    """(targets, top-k item rows) for the users of a split, ranked over all items."""
    model.eval()
    users = np.arange(seqs.n_users) if users is None else users
    batch = eval_batch(seqs, users, split, model.pos_emb.num_embeddings)
    out = []
    for s in range(0, len(users), chunk):
        hist = torch.from_numpy(batch.history[s : s + chunk])
        last = torch.from_numpy(batch.lengths[s : s + chunk]) - 1
        hidden = model(hist)[torch.arange(len(hist)), last]
        out.append(model.scores(hidden).topk(k, dim=1).indices.numpy())
    return batch.targets, np.concatenate(out)


def evaluate(model: SASRec, seqs: Sequences, split: str, head_items=None, users=None) -> dict:
    targets, ranked = rank(model, seqs, split, users)
    return split_metrics(ranked, targets, head_items)


def train_sasrec(seqs: Sequences, n_items: int, cfg: SASRecConfig, log=print, threads: int | None = 1) -> TrainedSASRec:
    with fit_context(cfg.seed, threads):
        return _train(seqs, n_items, cfg, log)


def _train(seqs: Sequences, n_items: int, cfg: SASRecConfig, log) -> TrainedSASRec:
    model = SASRec(n_items, cfg)
    trained = TrainedSASRec(model, cfg)
    opt = _optimizer(model, cfg)
    rng = np.random.default_rng(cfg.seed)
    train_users = np.flatnonzero(seqs.lengths >= 4)
    valid_users = _validation_users(seqs, cfg, rng)
    started = time.perf_counter()
    deadline = started + cfg.max_train_minutes * 60
    best_score, best_state, stale, samples, train_s, lr_scale = -1.0, None, 0, 0, 0.0, 1.0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        record = {"epoch": epoch, "lr_scale": lr_scale}
        record["loss"], n = _run_epoch(model, opt, cfg, seqs, train_users, rng, lr_scale, holdout=2)
        samples += n
        train_s += time.perf_counter() - t0
        record["elapsed_s"] = round(time.perf_counter() - started, 1)
        out_of_time = selection_out_of_time(deadline, epoch, train_s, cfg.refit_on_valid)
        if epoch % cfg.eval_every == 0 or out_of_time:
            metrics = evaluate(model, seqs, "valid", users=valid_users)["all"]
            record["valid"] = metrics
            score = metrics["ndcg@10"] + 1e-3 * metrics["recall@10"]
            if score > best_score:
                best_score, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
                trained.best = {"epoch": epoch, "valid": metrics}
            else:
                stale += 1
                if stale % cfg.lr_decay_patience == 0:
                    lr_scale *= cfg.lr_decay
            log(
                f"sasrec epoch {epoch}: loss {record['loss']:.4f} valid R@10 {metrics['recall@10']:.4f} "
                f"N@10 {metrics['ndcg@10']:.4f} ({record['elapsed_s']:.0f}s)"
            )
        trained.history.append(record)
        if stale >= cfg.patience or out_of_time:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    refit = None
    if cfg.refit_on_valid and trained.best:
        epochs = trained.best["epoch"]
        if refit_fits(deadline, epochs, train_s / len(trained.history)):
            t0 = time.perf_counter()
            trained.selected_model, trained.model = trained.model, _refit(n_items, cfg, seqs, trained.history[:epochs])
            train_s += time.perf_counter() - t0
            refit = {"done": True, "epochs": epochs}
            log(f"sasrec refit on train + validation targets: {epochs} epochs")
        else:
            refit = {"done": False, "reason": "time budget"}
    trained.stats = {
        **({"refit": refit} if refit else {}),
        "train_seconds": round(train_s, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "train_samples": samples,
        "samples_per_s": round(samples / max(train_s, 1e-9), 1),
        "epochs": len(trained.history),
        "torch_threads": torch.get_num_threads(),
    }
    return trained


def _optimizer(model: SASRec, cfg: SASRecConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)


def _run_epoch(model, opt, cfg, seqs, users, rng, lr_scale, holdout) -> tuple[float, int]:
    model.train()
    for group in opt.param_groups:
        group["lr"] = cfg.lr * lr_scale
    losses, samples = [], 0
    for batch_users in _length_bucketed_batches(users, seqs.lengths, cfg.batch_size, rng):
        batch = train_batch(seqs, batch_users, cfg.max_history, None, rng, holdout=holdout)
        targets = torch.from_numpy(batch.targets)
        hidden = model(torch.from_numpy(batch.history))
        chosen = targets >= 0
        loss = F.cross_entropy(model.scores(hidden[chosen]), targets[chosen])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        samples += int(chosen.sum())
    return float(np.mean(losses)), samples


def _refit(n_items: int, cfg: SASRecConfig, seqs: Sequences, history: list[dict]) -> SASRec:
    """The generator's refit, for SASRec: from scratch, validation targets included, the chosen epochs
    with the selection run's learning-rate history."""
    torch.manual_seed(cfg.seed)
    model = SASRec(n_items, cfg)
    opt = _optimizer(model, cfg)
    rng = np.random.default_rng(cfg.seed + 2)
    users = np.flatnonzero(seqs.lengths >= 3)
    for record in history:
        _run_epoch(model, opt, cfg, seqs, users, rng, record["lr_scale"], holdout=1)
    model.eval()
    return model
