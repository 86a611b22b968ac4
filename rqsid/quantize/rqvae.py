"""RQ-VAE tokenizer (as in TIGER): an MLP autoencoder whose latent is residual-quantised.

The default is one wide hidden layer (512), a 128-d latent and 20 cosine-decayed epochs: it stays
close to the inputs and reconstructs better than faiss's ResidualQuantizer in less than twice its
time, where TIGER's deep narrow model (32-d latent) kept only half of Beauty's variance. Alone it
spent its deeper codes unevenly (Beauty layer-2 Gini 0.45, Scientific 0.76); balanced k-means
seeding and the code-usage term below make it even (0.2-0.25) at a small cost in reconstruction.

Training, in order:
1. warm-up: `warmup_epochs` of the plain autoencoder (no quantisation). The codebooks are then
   seeded on latents that already carry the data's structure; seeded on a random encoder's output
   they would describe a space the encoder leaves within a few epochs, and many codes would die.
2. codebooks: level l is k-means (`codebook_init_iters` iterations, the first share of them
   Sinkhorn-balanced: rqsid.quantize.kmeans) on the residuals the levels before it leave of the
   encoder output. Plain Lloyd seeded most codes where few items are and left the layers uneven.
3. quantised training: reconstruction through a straight-through estimator, plus per level a
   codebook loss ||sg(r_l) - e_l||^2 and a commitment loss beta * ||r_l - sg(e_l)||^2, plus
   `code_usage_weight` x the code-usage deficit (1 - normalised entropy of the batch's average soft
   assignment, per level; on `code_usage_rows` rows of each batch): it keeps the codes evenly used
   while the encoder and codebooks move.
   After each epoch, codes that no item used in that epoch are re-seeded on residuals of that
   level drawn with probability proportional to their quantisation error (high-error residuals);
   optionally (`code_split_factor`) over-full codes are split too.
   With `lr_schedule="cosine"` the learning rate decays over these epochs (towards 0), so the short
   run still ends settled.
   Training stops early when the epoch's reconstruction loss has not improved by `min_delta` for
   `patience` epochs, and the best epoch's weights are kept.

A guard watches both phases (`_Guard`): an epoch whose reconstruction error jumps above 1.5x the
phase's best, or comes within 2 % of what predicting the mean gives (the decoder's output went
constant), rolls the model and optimiser back to the phase's best state and halves the learning rate
for the rest of the fit (at most 3 times). At the default rate a few fits broke that way: the 1M-item
scale fit's warm-up went 0.24 -> 0.63 -> 0.99 and the codes came from a dead network; the study's
uniform control collapsed to the mean in one seed. Fits that never trip it are unchanged.

Everything random comes from the seed: weights (torch.manual_seed inside a forked RNG, so the
caller's global RNG is untouched), data order, k-means and restarts (one torch.Generator).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rqsid import RqsidError
from rqsid.quantize.base import (
    Tokenizer,
    as_matrix,
    check_codes,
    encode_in_chunks,
    fit_context,
    fit_level,
    residual_assign,
    sum_codewords,
    torch_threads,
)

_INFERENCE_BATCH = 8192


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAEModule(nn.Module):
    def __init__(self, input_dim: int, hidden_dims: list[int], latent_dim: int, levels: int, size: int):
        super().__init__()
        self.encoder = _mlp([input_dim, *hidden_dims, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden_dims), input_dim])
        self.codebooks = nn.Parameter(torch.zeros(levels, size, latent_dim))

    def quantise(self, z: torch.Tensor, usage_temperature: float = 0.0, usage_rows: int | None = None) -> "Quantised":
        """Greedy residual quantisation with the losses for training; residuals kept for restarts.
        With usage_temperature > 0 the code-usage deficit of every level is computed too (with gradients),
        on the first usage_rows rows (None = all; training batches are shuffled)."""
        levels = self.codebooks.shape[0]
        codes = []
        residuals = torch.empty(z.shape[0], levels, z.shape[1])
        errors = torch.empty(z.shape[0], levels)
        codebook_loss = commitment = usage_deficit = z.new_zeros(())
        residual = z
        for level in range(levels):
            book = self.codebooks[level]
            with torch.no_grad():
                dist = (residual * residual).sum(1, keepdim=True) - 2 * residual @ book.T + (book * book).sum(1)
            codes.append(dist.argmin(1))
            if usage_temperature > 0:  # recomputed with gradients on the sample only: its backward pass is the cost
                sample = residual[:usage_rows]
                sample_dist = (sample * sample).sum(1, keepdim=True) - 2 * sample @ book.T + (book * book).sum(1)
                usage_deficit = usage_deficit + code_usage_deficit(sample_dist, usage_temperature)
            chosen = book[codes[level]]
            codebook_loss = codebook_loss + F.mse_loss(chosen, residual.detach())
            commitment = commitment + F.mse_loss(residual, chosen.detach())
            residuals[:, level] = residual.detach()
            residual = residual - chosen.detach()
            errors[:, level] = (residual.detach() ** 2).sum(1)
        # straight-through: forward uses the quantised latent, backward passes gradients to z unchanged
        return Quantised(
            torch.stack(codes, 1), z - residual.detach(), codebook_loss, commitment, residuals, errors, usage_deficit
        )


def code_usage_deficit(sq_dist: torch.Tensor, temperature: float) -> torch.Tensor:
    """1 - normalised entropy of the batch's average soft assignment to the codes (0 = every code
    equally used). Minimising it spreads items over the codes: the gradient moves rarely chosen codes
    towards the items and the encoder's residuals towards rarely chosen codes. The softmax temperature
    is relative to the batch's mean squared distance to the nearest code, so it is scale-free."""
    scale = temperature * sq_dist.detach().min(1).values.mean().clamp_min(1e-12)
    usage = torch.softmax(-sq_dist / scale, 1).mean(0)
    entropy = -(usage * torch.log(usage.clamp_min(1e-12))).sum()
    return 1.0 - entropy / math.log(sq_dist.shape[1])


@dataclass
class Quantised:
    codes: torch.Tensor  # (b, L)
    latent: torch.Tensor  # (b, latent) quantised, straight-through
    codebook_loss: torch.Tensor
    commitment: torch.Tensor
    residuals: torch.Tensor  # (b, L, latent): the input of each level
    errors: torch.Tensor  # (b, L): squared error left after each level
    usage_deficit: torch.Tensor  # sum over levels of code_usage_deficit (0 when not computed)


@dataclass
class EpochStats:
    loss: float
    recon: float
    codebook: float
    commitment: float
    counts: torch.Tensor | None = None  # (L, K) code uses over the epoch
    codes: torch.Tensor | None = None  # (n, L) each item's codes in the epoch
    residuals: torch.Tensor | None = None  # (n, L, latent)
    errors: torch.Tensor | None = None  # (n, L)
    lr: float = 0.0  # the optimiser's learning rate during the epoch


class _Guard:
    """Rolls a fit back when an epoch breaks the network (see the module docstring): the phase's best
    model and optimiser state are kept, and each rollback halves the learning rate for the rest of the fit."""

    DIVERGED = 1.5  # an epoch's reconstruction error above this x the phase's best (or x the mean's, at first)
    DEAD = 0.98  # ... or above this x the error of predicting the mean, once the fit did better than LIVE x it
    LIVE = 0.9
    MAX_ROLLBACKS = 3

    def __init__(self, model: nn.Module, optimiser: torch.optim.Optimizer, mean_error: float):
        self.model, self.optimiser, self.mean_error = model, optimiser, mean_error
        self.lr_scale, self.rollbacks, self.seen_live = 1.0, 0, False
        self.new_phase()

    def new_phase(self) -> None:
        """A phase starts (warm-up, quantisation): until an epoch does better, its reference is the state it
        starts from, with the error of predicting the mean."""
        self.best = self.mean_error
        self._keep()

    def check(self, recon: float) -> bool:
        """After an epoch: True (and the model rolled back) when it broke the network."""
        dead = self.seen_live and recon >= self.DEAD * self.mean_error
        broken = not math.isfinite(recon) or recon > self.DIVERGED * self.best or dead
        if broken and self.rollbacks < self.MAX_ROLLBACKS:
            self.model.load_state_dict(self.state[0])
            self.optimiser.load_state_dict(self.state[1])
            self.lr_scale *= 0.5
            self.rollbacks += 1
            return True
        self.seen_live = self.seen_live or recon < self.LIVE * self.mean_error
        if recon < self.best:
            self.best = recon
            self._keep()
        return False

    def _keep(self) -> None:
        self.state = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimiser.state_dict()))


class RQVAE(Tokenizer):
    kind = "rqvae"

    def __init__(self, config=None):
        super().__init__(config)
        self.model: RQVAEModule | None = None

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, X: Any, progress: bool = True) -> "RQVAE":
        X = self._prepare_fit(X)
        cfg = self.config
        if X.shape[0] < cfg.codebook_size:
            raise RqsidError(
                f"RQ-VAE: {X.shape[0]} items but codebook_size={cfg.codebook_size}; give more items or lower quantizer.codebook_size"
            )
        Xs = self.standardiser.forward(X)
        self.history = []
        with fit_context(cfg.seed, cfg.threads):
            self.model = RQVAEModule(self.input_dim, cfg.hidden_dims, cfg.latent_dim, cfg.levels, cfg.codebook_size)
            generator = torch.Generator().manual_seed(cfg.seed)
            optimiser = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
            bar = tqdm(total=cfg.warmup_epochs + cfg.epochs, desc="RQ-VAE", disable=not progress)
            guard = _Guard(self.model, optimiser, mean_error=float(Xs.square().mean()))
            try:
                self._warm_up(Xs, optimiser, generator, bar, guard)
                self._init_codebooks(Xs, generator)
                guard.new_phase()
                self._train(Xs, optimiser, generator, bar, guard)
            finally:
                bar.close()
        self.model.eval()
        return self

    def _warm_up(self, Xs: torch.Tensor, optimiser, generator: torch.Generator, bar, guard: "_Guard") -> None:
        for epoch in range(self.config.warmup_epochs):
            start = time.perf_counter()
            for group in optimiser.param_groups:
                group["lr"] = self.config.lr * guard.lr_scale
            stats = self._epoch(Xs, optimiser, generator, quantised=False)
            self._record("warmup", epoch, stats, start, bar, rolled_back=guard.check(stats.recon))

    @torch.no_grad()
    def _init_codebooks(self, Xs: torch.Tensor, generator: torch.Generator) -> None:
        cfg = self.config
        residual = self._latents(Xs)
        for level in range(cfg.levels):
            result = fit_level(residual, cfg, cfg.codebook_init_iters, generator)
            self.model.codebooks[level] = result.centroids
            residual = residual - result.centroids[result.labels]

    def _train(self, Xs: torch.Tensor, optimiser, generator: torch.Generator, bar, guard: "_Guard") -> None:
        cfg = self.config
        best, waited, best_state = float("inf"), 0, None
        for epoch in range(cfg.epochs):
            start = time.perf_counter()
            lr = cfg.lr
            if cfg.lr_schedule == "cosine":  # decays towards 0: a sharper optimum in few epochs
                lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
            for group in optimiser.param_groups:
                group["lr"] = lr * guard.lr_scale
            stats = self._epoch(Xs, optimiser, generator, quantised=True)
            if guard.check(stats.recon):
                self._record("train", epoch, stats, start, bar, rolled_back=True)
                continue
            if stats.recon < best - cfg.early_stop_min_delta:
                best, waited, best_state = stats.recon, 0, copy.deepcopy(self.model.state_dict())
            else:
                waited += 1
            last = waited >= cfg.early_stop_patience or epoch == cfg.epochs - 1
            restarted = [] if last or not cfg.dead_code_restart else self._restart_dead_codes(stats, generator)
            split = [] if last or not cfg.code_split_factor else self._split_overfull_codes(stats, generator)
            self._record("train", epoch, stats, start, bar, restarted, split)
            if waited >= cfg.early_stop_patience:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)

    def _epoch(self, Xs: torch.Tensor, optimiser, generator: torch.Generator, quantised: bool) -> EpochStats:
        cfg, model = self.config, self.model
        n = Xs.shape[0]
        order = torch.randperm(n, generator=generator)
        totals = torch.zeros(4, dtype=torch.float64)  # loss, recon, codebook, commitment (item-weighted sums)
        stats = EpochStats(0, 0, 0, 0, lr=optimiser.param_groups[0]["lr"])
        if quantised:
            stats.counts = torch.zeros(cfg.levels, cfg.codebook_size, dtype=torch.int64)
            stats.codes = torch.empty(n, cfg.levels, dtype=torch.int64)
            stats.residuals = torch.empty(n, cfg.levels, cfg.latent_dim)
            stats.errors = torch.empty(n, cfg.levels)
        model.train()
        for start in range(0, n, cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            x = Xs[rows]
            z = model.encoder(x)
            if quantised:
                q = model.quantise(z, cfg.code_usage_temperature if cfg.code_usage_weight > 0 else 0.0, cfg.code_usage_rows)
                recon = F.mse_loss(model.decoder(q.latent), x)
                loss = recon + q.codebook_loss + cfg.commitment_beta * q.commitment + cfg.code_usage_weight * q.usage_deficit
                parts = (loss, recon, q.codebook_loss, q.commitment)
                self._collect(stats, rows, q)
            else:
                recon = F.mse_loss(model.decoder(z), x)
                loss = recon
                parts = (loss, recon, torch.zeros(()), torch.zeros(()))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            totals += torch.tensor([float(p.detach()) for p in parts], dtype=torch.float64) * len(rows)
        stats.loss, stats.recon, stats.codebook, stats.commitment = (totals / n).tolist()
        return stats

    @staticmethod
    def _collect(stats: EpochStats, rows: torch.Tensor, q: Quantised) -> None:
        for level in range(q.codes.shape[1]):
            stats.counts[level] += torch.bincount(q.codes[:, level], minlength=stats.counts.shape[1])
        stats.codes[rows] = q.codes
        stats.residuals[rows] = q.residuals
        stats.errors[rows] = q.errors

    @torch.no_grad()
    def _split_overfull_codes(self, stats: EpochStats, generator: torch.Generator) -> list[int]:
        """Each code used more than code_split_factor x its fair share n/K over the epoch gets one of the
        least used codes (below 1/factor of the share; unused ones are left to the dead-code restart when
        it is on) moved onto a residual of one of its own items: the crowded region is split next epoch,
        a sparse one loses a code. At most one move per over-full code and epoch, so the codebook
        changes gradually."""
        factor, (levels, size) = self.config.code_split_factor, stats.counts.shape
        fair = stats.codes.shape[0] / size
        moved = []
        for level in range(levels):
            counts = stats.counts[level]
            over = torch.nonzero(counts > factor * fair).flatten()
            over = over[torch.argsort(counts[over], descending=True)]
            under = torch.nonzero((counts < fair / factor) & (counts > (0 if self.config.dead_code_restart else -1))).flatten()
            under = under[torch.argsort(counts[under], stable=True)]
            pairs = min(over.numel(), under.numel())
            for crowded, spare in zip(over[:pairs].tolist(), under[:pairs].tolist()):
                members = torch.nonzero(stats.codes[:, level] == crowded).flatten()
                row = members[torch.randint(members.numel(), (1,), generator=generator)]
                self.model.codebooks[level, spare] = stats.residuals[row, level][0]
            moved.append(pairs)
        return moved

    @torch.no_grad()
    def _restart_dead_codes(self, stats: EpochStats, generator: torch.Generator) -> list[int]:
        """Codes unused over the epoch move onto residuals of their level, drawn by quantisation error."""
        restarted = []
        for level in range(self.config.levels):
            dead = torch.nonzero(stats.counts[level] == 0).flatten()
            restarted.append(int(dead.numel()))
            if dead.numel() == 0:
                continue
            weights = stats.errors[:, level] + 1e-12  # > 0 everywhere so enough distinct rows can be drawn
            rows = torch.multinomial(weights, int(dead.numel()), replacement=False, generator=generator)
            self.model.codebooks[level, dead] = stats.residuals[rows, level]
        return restarted

    def _record(
        self,
        phase: str,
        epoch: int,
        stats: EpochStats,
        start: float,
        bar,
        restarted: list[int] | None = None,
        split: list[int] | None = None,
        rolled_back: bool = False,
    ) -> None:
        entry: dict[str, Any] = {
            "phase": phase,
            "epoch": epoch + 1,
            "loss": stats.loss,
            "recon": stats.recon,
            "codebook_loss": stats.codebook,
            "commitment_loss": stats.commitment,
            "lr": stats.lr,
        }
        if stats.counts is not None:
            entry["utilisation"] = (stats.counts > 0).float().mean(1).tolist()
            entry["restarted"] = restarted or [0] * self.config.levels
            entry["split"] = split or [0] * self.config.levels
        if rolled_back:
            entry["rolled_back"] = True  # this epoch's weights were discarded (see _Guard)
        entry["seconds"] = round(time.perf_counter() - start, 4)
        self.history.append(entry)
        postfix = {"phase": phase, "loss": f"{stats.loss:.4f}", "recon": f"{stats.recon:.4f}"}
        if "utilisation" in entry:
            postfix["util"] = "/".join(f"{u:.2f}" for u in entry["utilisation"])
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)

    # ---- levels added after the fit (Tokenizer.add_level) ----------------------------------
    @torch.no_grad()
    def _quantised_space(self, X: torch.Tensor) -> torch.Tensor:
        return self._latents(self.standardiser.forward(X))

    def _codebooks(self) -> torch.Tensor:
        return self.model.codebooks.detach()

    def _set_codebooks(self, codebooks: torch.Tensor) -> None:
        self.model.codebooks = nn.Parameter(codebooks.contiguous())

    def _level_iters(self) -> int:
        return self.config.codebook_init_iters

    # ---- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def _latents(self, Xs: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return torch.cat([self.model.encoder(Xs[i : i + _INFERENCE_BATCH]) for i in range(0, Xs.shape[0], _INFERENCE_BATCH)])

    @torch.no_grad()
    def encode(self, X: Any) -> np.ndarray:
        self._check_fitted()
        X = as_matrix(X, self.input_dim)
        codebooks = self.model.codebooks.detach()
        self.model.eval()
        with torch_threads(self.config.threads):
            return encode_in_chunks(
                X, lambda block: residual_assign(self._latents(self.standardiser.forward(block)), codebooks)[0]
            )

    @torch.no_grad()
    def decode(self, codes: Any) -> np.ndarray:
        self._check_fitted()
        codes = check_codes(codes, self.levels, self.config.codebook_size)
        latents = sum_codewords(codes, self.model.codebooks.detach())
        self.model.eval()
        with torch_threads(self.config.threads):
            parts = [self.model.decoder(latents[i : i + _INFERENCE_BATCH]) for i in range(0, latents.shape[0], _INFERENCE_BATCH)]
        return self.standardiser.inverse(torch.cat(parts)).numpy()

    # ---- persistence ---------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def _load_state(self, state: dict[str, Any]) -> None:
        cfg = self.config
        self.model = RQVAEModule(self.input_dim, cfg.hidden_dims, cfg.latent_dim, cfg.levels, cfg.codebook_size)
        self.model.load_state_dict(state["model"])
        self.model.eval()


RQVAETokenizer = RQVAE
