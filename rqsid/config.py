"""One typed configuration for the whole pipeline, loaded from a file and overridable by flags.

Every section has defaults that run on a 2-core laptop; every run logs the whole model. Named profiles
(`PROFILES`: demo, quick, full) bound a run's cost; `load_config` merges one rule for all of them:
profile < config file < --set overrides (a profile fills only what the file and the overrides leave unset).
An artifact's version id hashes `section.identity()`: the section without its runtime fields.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rqsid import RqsidError

# How fast an artifact is made, not what it is: left out of version ids.
RUNTIME_FIELDS = frozenset({"threads"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def identity(self) -> dict[str, Any]:
        """The fields that define an artifact made with this section (version ids hash exactly these)."""
        return self.model_dump(mode="json", exclude=RUNTIME_FIELDS & set(type(self).model_fields))


class EmbedConfig(_Section):
    model_path: str | None = Field(None, description="sentence-transformers model folder; None = packaged all-MiniLM-L6-v2")
    batch_size: int = Field(128, gt=0)
    max_seq_length: int = Field(128, gt=0, description="tokens kept per item text")
    max_chars: int = Field(2000, gt=0, description="item text is cut to this many characters before tokenising")
    normalize: bool = True


class QuantizerConfig(_Section):
    method: Literal["rqvae", "rkmeans"] = "rqvae"
    levels: int = Field(3, ge=1, le=8, description="code levels; catalogs above levels_up_to_items get more")
    codebook_size: int = Field(256, ge=2, le=65536)
    # The code space is sized from the catalog: up to levels_up_to_items items keep `levels` levels, and
    # every further items_growth_per_level-fold growth adds one (up to 8): 3 x 256 up to 32,768 items
    # (Beauty, Scientific, Sports: TIGER's setting), 4 up to 262,144, 5 up to 2.1M, 6 up to 16.8M. That
    # is the first guess: the pipeline adds a level while the codes collide for more items than the gate
    # allows (rqsid.quantize.fit_sized). Measured at 256 codes on realistic embeddings
    # (benchmarks/results/scale_issue15_final.md): 100k items collide for 0.22 at 4 levels, 0.11 with a fifth
    # added; 1M items for 0.27 at 5 levels, 0.17 with a sixth added.
    levels_up_to_items: int | None = Field(32_768, ge=1, description="largest catalog that keeps `levels` levels; None = always `levels`")
    items_growth_per_level: float = Field(8.0, gt=1, description="catalog growth (factor) beyond levels_up_to_items that adds one level")
    fit_sample: int | None = Field(65_536, ge=2, description="largest number of items a tokenizer is fitted on (a seeded random sample; codes are still made for every item); None = all")
    # One wide hidden layer, a 128-d latent and a short cosine schedule (the "recon-first" setting of
    # session 2) with balanced k-means codebooks: reconstructs better than faiss's ResidualQuantizer in
    # less of its CPU time and spends codes evenly (benchmarks/results/tokenizer_peers_issue15.md). TIGER's
    # deep narrow model (hidden [512, 256, 128], latent 32, 100 constant-rate epochs) was balanced too
    # but 8x slower and 10 % worse at reconstruction (README, "Choosing the tokenizer").
    latent_dim: int = Field(128, ge=2)
    hidden_dims: list[int] = Field(default_factory=lambda: [512])
    epochs: int = Field(20, ge=1, description="quantised training epochs (after warmup_epochs)")
    batch_size: int = Field(512, ge=8)
    lr: float = Field(7e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field("cosine", description="learning rate over the quantised epochs (cosine: decays towards 0 by the last epoch, for short schedules)")
    commitment_beta: float = Field(0.25, ge=0)
    warmup_epochs: int = Field(5, ge=0, description="plain autoencoder epochs before the codebooks are seeded by k-means")
    kmeans_iters: int = Field(50, ge=1, description="residual k-means: Lloyd iterations per level")
    codebook_init_iters: int = Field(20, ge=1, description="RQ-VAE: k-means iterations per level that seed the codebooks after the warm-up (training refines them)")
    # Balanced k-means (rqsid/quantize/kmeans.py): without it deep residual levels collapse onto one
    # central code on near-isotropic data, and the RQ-VAE's codebooks start (and stay) uneven.
    kmeans_balance: float = Field(0.1, ge=0, description="Sinkhorn temperature of the balanced k-means iterations, relative to the mean squared distance to the nearest centre (larger = more even clusters); 0 = plain Lloyd")
    kmeans_balanced_share: float = Field(0.5, ge=0, le=1, description="share of each k-means run's iterations (the first ones) that assign by the balanced plan; the rest are plain Lloyd")
    code_usage_weight: float = Field(0.1, ge=0, description="RQ-VAE: weight of the code-usage term, per level 1 - normalised entropy of the batch's average soft code assignment; 0 = off")
    code_usage_temperature: float = Field(0.1, gt=0, description="RQ-VAE: softmax temperature of that soft assignment, relative to the batch's mean squared distance to the nearest code")
    code_usage_rows: int | None = Field(128, ge=1, description="RQ-VAE: rows of each batch the code-usage term is estimated on (a quarter of the default batch costs a quarter as much); None = the whole batch")
    dead_code_restart: bool = True
    code_split_factor: float | None = Field(None, gt=1, description="RQ-VAE: after each epoch a code used more than this many times its fair share (items / codes) takes over one of the least used codes (placed on one of its items); None = off")
    early_stop_patience: int = Field(10, ge=1, description="epochs without a min_delta gain in reconstruction loss before stopping")
    early_stop_min_delta: float = Field(1e-4, ge=0)
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads while fitting; None = torch's default (1 is fastest for small models or a busy machine)")


class PruneConfig(_Section):
    level: int = Field(2, ge=1, description="1-based layer whose most frequent tokens are removed")
    # 0.4: healthy layers on real data have Gini 0.13-0.32 (reference RQ-VAE/LETTER layers 2-4 on
    # Beauty and Scientific; our RQ-VAE's layers 1 and 3 on Scientific: 0.32, 0.29), so 0.4 sits about
    # the hourglass margin (0.1) above the worst healthy neighbour and flags a layer 2 like our
    # Scientific RQ-VAE's (0.43, an hourglass) while passing every healthy layer measured.
    gini_threshold: float = Field(0.4, gt=0, le=1, description="Gini (over the codes still in play) that the retained "
                                  "layer-2 tokens must reach; gate.max_layer2_gini follows it")
    max_collision_rate: float = Field(0.2, ge=0, le=1, description="bound on the share of items that share a SID before dedup")
    max_k: int | None = Field(None, ge=0, description="largest K tried; None = all tokens (then the layer is dropped)")
    fallback: Literal["drop_layer", "keep"] = Field(
        "drop_layer", description="when no K meets both bounds: drop the layer, or keep the SIDs unpruned (the gate then fails)")


class GateConfig(_Section):
    max_layer2_gini: float = Field(0.4, gt=0, le=1, description="equals prune.gini_threshold (set either; see "
                                   "RqsidConfig), so a pruned index passes")
    max_collision_rate: float = Field(0.2, ge=0, le=1)
    min_utilisation: float = Field(0.05, ge=0, le=1, description="each layer must use at least this share of its codes")


class GeneratorConfig(_Section):
    max_history: int = Field(20, ge=1, description="most recent items a user's history keeps")
    d_model: int = Field(128, ge=8)
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(2, ge=1)
    ffn_mult: int = Field(4, ge=1, description="transformer feed-forward width / d_model")
    head_mult: int = Field(2, ge=1, description="SID head MLP width / d_model")
    dropout: float = Field(0.2, ge=0, lt=1)
    user_buckets: int = Field(1, ge=1, description="hashed user-id buckets; 1 = no user feature (on Beauty 2000 buckets overfit: lower train loss, lower validation recall)")
    use_query: bool = Field(False, description="condition on the query text that led to the target (search)")
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=1, description="users per batch (each gives up to max_history targets)")
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(200, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 = off")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="within the trie-allowed tokens of each step")
    eval_every: int = Field(2, ge=1, description="epochs between validation beam searches")
    valid_users: int = Field(5000, ge=0, description="fixed random validation subsample for early stopping; 0 = all")
    patience: int = Field(10, ge=1, description="validations without a gain before stopping")
    lr_decay: float = Field(0.5, gt=0, le=1, description="learning-rate factor at each validation plateau")
    lr_decay_patience: int = Field(3, ge=1, description="validations without a gain that make a plateau")
    beam_size: int = Field(20, ge=10, description="beams kept while generating; at least 10: the metrics rank 10 items")
    # The hybrid generator (issue 13): besides the SID head, an item-level full softmax over item vectors made of
    # the item's SID tokens, its text embedding (projected) and a per-item embedding that is dropped on 10 % of
    # the training occurrences, so that items unseen in training still score through tokens and text. The
    # beam's items and the item-level top items are ranked together by SID log-probability + item
    # log-probability. On Beauty validation it beat the SID-only generator by 1.4x Recall@10 and SASRec
    # (benchmarks/results/generator_ideas.md); `GeneratorConfig.sid_only()` is the SID-only generator.
    item_loss_weight: float = Field(1.0, ge=0, description="weight of an item-level full-softmax loss over item vectors composed from SID tokens (+ text, + per-item embeddings); 0 = off")
    rank_mix: float = Field(1.0, ge=0, description="weight of the item-level log-probability in the ranking score of candidates")
    candidates: Literal["beam", "union"] = Field("union", description="rank the beam's items, or the beam's and the item-level top items together")
    item_text: bool = Field(True, description="item vectors include a projection of the item's text embedding (training needs the items' embeddings)")
    item_ids: bool = Field(True, description="item vectors include a learned per-item embedding (new items get none)")
    # The refit (issue 13): the validation targets are each user's most recent interaction before the test one,
    # and a model that never trained on them loses on test (Scientific: +10 % Recall@10 for ours, +15 % for
    # SASRec, benchmarks/results/scientific_generator_refit.md). The contest judges the selection model.
    refit_on_valid: bool = Field(True, description="after early stopping, retrain for the chosen epochs with the validation targets as training targets too (the served model; contests judge the model chosen before it)")
    item_id_dropout: float = Field(0.1, ge=0, lt=1, description="share of training occurrences whose per-item embedding is dropped (new-item robustness)")
    max_train_minutes: float = Field(90.0, gt=0, description="wall-clock budget of a training run, the refit included (issue 13: at most 90 minutes per seed)")
    threads: int | None = Field(None, ge=1, description="torch threads while training; None = torch's default (1 is faster on a busy machine)")
    seed: int = 0

    def sid_only(self) -> GeneratorConfig:
        """This generator scored by its SIDs alone: no item-level head, so no text and no per-item
        embeddings. The hourglass study trains this one, since it asks what the SIDs themselves are worth
        for retrieval (the item-level head would mask differences between SID variants)."""
        return self.model_copy(update={"item_loss_weight": 0.0, "rank_mix": 0.0, "candidates": "beam", "item_text": False,
                                       "item_ids": False, "item_id_dropout": 0.0, "refit_on_valid": False})


class DriftConfig(_Section):
    max_new_share: float = Field(0.1, ge=0, le=1)
    # Calibrated on real catalogs (benchmarks/results/drift_calibration.md): held-out items of the same catalog
    # arrive at 1.11-1.48x the index's error, another catalog's items at 2.43-3.42x.
    max_recon_ratio: float = Field(1.9, gt=0, description="new items' reconstruction error / the index's")
    max_new_layer2_gini: float = Field(0.6, gt=0, le=1)
    # Behaviour drift: users change, not only the catalog. The champion's Recall@10 on the interactions
    # after its training cut-off, against the figure it scored at registration.
    max_recall_drop: float = Field(0.25, ge=0, le=1, description="behaviour drift fires when the champion's Recall@10 on "
                                   "newer interactions is below (1 - this) x its registration Recall@10")
    min_behaviour_cases: int = Field(100, ge=1, description="newer interactions needed before behaviour drift is judged")
    behaviour_cases: int = Field(5000, ge=0, description="most newer interactions evaluated (a seeded sample); 0 = all")


class ServingConfig(_Section):
    """Which generator serves: the champion/challenger contest at registration."""

    contest_users: int = Field(5000, ge=0, description="validation users of today's data both models are evaluated on "
                                "(a seeded sample); 0 = all")
    contest_metric: Literal["recall@10", "ndcg@10"] = "recall@10"
    promote_z: float = Field(2.0, ge=0, description="the challenger wins when its mean paired gain on contest_metric "
                             "exceeds this many standard errors of the per-user differences")


class OrchestrationConfig(_Section):
    dask_address: str | None = Field(None, description="scheduler address; None = a LocalCluster")
    dask_workers: int = Field(2, ge=1)
    partition_rows: int = Field(2000, ge=1)
    prefect_api_url: str | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_ui_url: str | None = Field(None, description="where reviewers open the MLflow UI, for links in run summaries; "
                                      "None = the tracking server if it is one, else http://127.0.0.1:5000 (`rqsid ui`)")


class RqsidConfig(_Section):
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    quantizer: QuantizerConfig = Field(default_factory=QuantizerConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)

    @model_validator(mode="after")
    def _prune_level_exists(self) -> RqsidConfig:
        if self.prune.level > self.quantizer.levels:
            raise ValueError(f"prune.level={self.prune.level} but the quantizer has {self.quantizer.levels} levels")
        return self

    @model_validator(mode="after")
    def _gate_follows_pruning(self) -> RqsidConfig:
        """Pruning chooses K so that the layer-2 Gini meets prune.gini_threshold; the gate then checks the
        same figure against gate.max_layer2_gini. Two different bounds would let pruning stop where the gate
        fails (or the reverse), so they are one figure: set either and the other follows; set both differently
        and the config is refused."""
        gini, gate = self.prune.gini_threshold, self.gate.max_layer2_gini
        prune_set, gate_set = "gini_threshold" in self.prune.model_fields_set, "max_layer2_gini" in self.gate.model_fields_set
        if gini == gate:
            return self
        if prune_set and gate_set:
            raise ValueError(f"gate.max_layer2_gini={gate} differs from prune.gini_threshold={gini}: they are one "
                             "figure (the gate checks what pruning aims at); set one of them, or both to the same value")
        if gate_set:
            self.prune.gini_threshold = gate
        else:
            self.gate.max_layer2_gini = gini
        return self

    def flat(self) -> dict[str, Any]:
        """Dotted keys, for logging as parameters."""
        out: dict[str, Any] = {}
        for section, values in self.model_dump().items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out


def _read(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix == ".toml":
        return tomllib.loads(text)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    section, _, field = key.partition(".")
    if not field:
        raise RqsidError(f"override {key!r} must look like section.field=value")
    data.setdefault(section, {})[field] = value


# Named profiles: config values that bound a run's cost, filled in only where the caller set nothing.
PROFILES: dict[str, dict[str, Any]] = {
    # the demo catalog (3,000 synthetic items): the whole `make demo` stays within minutes
    "demo": {"quantizer.epochs": 60, "quantizer.early_stop_patience": 10, "generator.epochs": 12,
             "generator.max_train_minutes": 2.0, "generator.valid_users": 1000, "generator.beam_size": 10},
    # `rqsid study --quick`: under 15 minutes on Scientific on 2 busy cores
    "quick": {"quantizer.epochs": 30, "quantizer.threads": 1, "generator.max_train_minutes": 1.0,
              "generator.valid_users": 500, "generator.beam_size": 10, "generator.threads": 1},
    # the full study: one thread per fit (runs share the cores), 10-minute generators
    "full": {"quantizer.threads": 1, "generator.max_train_minutes": 10.0, "generator.threads": 1},
}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                profile: str | None = None) -> RqsidConfig:
    """Load a config file (.toml, .json, .yaml), apply dotted overrides like {"quantizer.levels": 4}, then let
    the named profile fill the fields that neither of them set."""
    data: dict[str, Any] = _read(Path(path)) if path else {}
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    if profile is not None:
        if profile not in PROFILES:
            raise RqsidError(f"unknown config profile {profile!r}; use one of {', '.join(PROFILES)}")
        for key, value in PROFILES[profile].items():
            section, _, field = key.partition(".")
            data.setdefault(section, {}).setdefault(field, value)
    try:
        return RqsidConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(_problem(e) for e in err.errors())
        raise RqsidError(f"invalid config: {problems}") from None


def _problem(error: dict[str, Any]) -> str:
    """One validation error as `section.field: message` (a rule over several fields has no field)."""
    message = error["msg"].removeprefix("Value error, ")
    return f"{'.'.join(map(str, error['loc']))}: {message}" if error["loc"] else message


def parse_override(text: str) -> tuple[str, Any]:
    """`section.field=value` from the command line; the value is read as JSON when it parses."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise RqsidError(f"--set {text!r}: expected section.field=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
