"""The hourglass study: the four findings of Kuai et al. (EMNLP 2024 Industry, "Breaking the Hourglass
Phenomenon of Residual Quantization") as measured, rerunnable experiments on any catalog.

1. Concentration: residual quantization concentrates layer-2 tokens (high Gini, low entropy, large std).
2. Input uniformity: uniform inputs show no hourglass, non-uniform ones do (RQ amplifies the skew in layer 2).
3. Head vs tail: a generator does markedly better on targets with a head layer-2 token than on tail ones.
4. Pruning: dropping layer 2 helps the generator, adaptive top-K removal helps more.

Pure functions (numpy / torch through rqsid): synthetic inputs, quantizer sweeps over seeds, per-layer
rows and their mean / std, pruning variants, per-user generator hits with paired standard errors, and
the verdicts and markdown report computed from the numbers in a JSON-able results dict.
The Prefect flow (flows/study.py) runs them, logs to MLflow and writes the report.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from rqsid import RqsidError
from rqsid.config import GeneratorConfig, PruneConfig, QuantizerConfig
from rqsid.metrics import HOURGLASS_GINI_MARGIN, report_to_json, table_report
from rqsid.sids import SidTable, assign_sids

LAYER_KEYS = ("gini", "entropy_bits", "entropy_norm", "std", "utilisation", "max_share")
# A difference counts when it exceeds this many standard errors (about a 95% two-sided interval).
SIGNIFICANT_SE = 2.0
# "Markedly better" (finding 3): the head's Recall@10 at least this multiple of the tail's.
MARKED_RATIO = 1.5
REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "partly reproduced", "not reproduced", "not measured"


# ---------------------------------------------------------------- the data


KNOWN_DATASETS = {"beauty": ("amazon-beauty-2014", 1), "scientific": ("amazon-scientific-2018", 0)}


@dataclass
class StudyData:
    name: str
    catalog: Any  # pa.Table (validated)
    interactions: Any | None  # pa.Table (validated) or None
    item_ids: np.ndarray  # catalog order, object
    X: np.ndarray  # float32 (n, d), rows = item_ids
    references: dict[str, Path]  # name -> public *.index.json
    id_offset: int = 0
    embeddings: str = ""  # where the vectors came from
    quarantined: dict[str, int] = field(default_factory=dict)


def dataset_source(dataset: str) -> tuple[str, Path, int]:
    """(name, folder or file, reference id offset) for "beauty", "scientific" or a path."""
    from rqsid.home import shared_data_dir

    if dataset.lower() in KNOWN_DATASETS:
        folder, offset = KNOWN_DATASETS[dataset.lower()]
        return dataset.lower(), shared_data_dir() / folder, offset
    path = Path(dataset)
    if not path.exists():
        raise RqsidError(f"dataset {dataset!r} is neither beauty, scientific nor an existing path")
    return (path.stem if path.is_file() else path.name) or "catalog", path, 0


def load_study_data(dataset: str, embeddings: str | Path | None = None, interactions: str | Path | None = None,
                    embed_config=None, cache_dir: str | Path | None = None, progress: bool = True) -> StudyData:
    """The catalog (validated), its interactions, its embeddings (from a file, a cache, or embedded now)
    and the public reference SID files that come with it (a `reference-sids/` folder beside the data)."""
    from rqsid.catalog import validate_catalog, validate_interactions
    from rqsid.importers import import_dataset, import_interactions_table

    name, source, offset = dataset_source(dataset)
    raw_catalog, raw_inter = import_dataset(source)
    catalog, bad_items = validate_catalog(raw_catalog)
    item_ids = np.asarray(catalog.column("item_id").to_pylist(), dtype=object)
    if interactions is not None:
        raw_inter = import_interactions_table(interactions)
    quarantined = {"items": bad_items.num_rows}
    inter = None
    if raw_inter is not None:
        inter, bad_inter = validate_interactions(raw_inter, item_ids)
        quarantined["interactions"] = bad_inter.num_rows
    X, where = _study_embeddings(name, catalog, item_ids, embeddings, embed_config, cache_dir, progress)
    folder = source if source.is_dir() else source.parent
    references = {p.name.split(".")[0]: p for p in sorted((folder / "reference-sids").glob("*.index.json"))}
    return StudyData(name, catalog, inter, item_ids, X, references, offset, where, quarantined)


def _study_embeddings(name, catalog, item_ids, embeddings, embed_config, cache_dir, progress) -> tuple[np.ndarray, str]:
    from rqsid.config import EmbedConfig
    from rqsid.embed import TextEmbedder, embed_catalog, read_embeddings, write_embeddings
    from rqsid.versioning import catalog_version, item_content_hashes

    path = Path(embeddings) if embeddings else None
    if path is None and cache_dir is not None:
        version = catalog_version(item_ids, item_content_hashes(catalog))
        path = Path(cache_dir) / f"{name}-{version}.parquet"
        if not path.exists():
            cfg = embed_config or EmbedConfig()
            embedder = TextEmbedder(cfg.model_path, batch_size=cfg.batch_size, max_seq_length=cfg.max_seq_length,
                                    normalize=cfg.normalize)
            table = embed_catalog(catalog, embedder, max_chars=cfg.max_chars, progress=progress)
            ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
            write_embeddings(path, ids, np.asarray(table.column("vector").to_pylist(), dtype=np.float32))
    if path is None:
        raise RqsidError("no embeddings: pass an embeddings file or a cache folder to embed into")
    ids, X = read_embeddings(path)
    return align_embeddings(item_ids, ids, X, path), str(path)


def align_embeddings(item_ids: np.ndarray, emb_ids: np.ndarray, X: np.ndarray, path: Path | str = "") -> np.ndarray:
    """The rows of X in catalog order; RqsidError naming catalog items without a vector."""
    import pandas as pd

    rows = pd.Index(np.asarray(emb_ids, dtype=object).astype(str)).get_indexer(np.asarray(item_ids).astype(str))
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        raise RqsidError(f"embeddings {path} lack {len(missing)} catalog items, e.g. {list(item_ids[missing[:5]])}")
    return np.ascontiguousarray(X[rows], dtype=np.float32)


# ---------------------------------------------------------------- synthetic inputs (finding 2)


def uniform_sphere(n: int, d: int, seed: int) -> np.ndarray:
    """n points uniform on the unit sphere in d dimensions (normalised isotropic Gaussians)."""
    X = isotropic_gaussian(n, d, seed)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def isotropic_gaussian(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def zipf_sizes(n: int, clusters: int, exponent: float) -> np.ndarray:
    """Cluster sizes proportional to 1 / rank**exponent, summing to n (largest remainders round up)."""
    if clusters < 1 or n < clusters:
        raise RqsidError(f"zipf_sizes: need 1 <= clusters <= n, got clusters={clusters}, n={n}")
    weights = 1.0 / np.arange(1, clusters + 1, dtype=np.float64) ** exponent
    exact = weights / weights.sum() * n
    sizes = np.floor(exact).astype(np.int64)
    sizes[np.argsort(sizes - exact)[: n - sizes.sum()]] += 1
    return np.sort(sizes)[::-1]


def zipf_mixture(n: int, d: int, seed: int, clusters: int = 256, exponent: float = 1.0,
                 spread: float = 0.5) -> np.ndarray:
    """A skewed input: Gaussian clusters around random unit centres with Zipf-distributed sizes,
    projected onto the unit sphere (like normalised text embeddings). `spread` is the expected noise
    norm relative to the unit centre norm."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(clusters), zipf_sizes(n, clusters, exponent))
    X = centres[labels] + rng.standard_normal((n, d)) * (spread / math.sqrt(d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X[rng.permutation(n)].astype(np.float32)


@dataclass(frozen=True)
class SyntheticSpec:
    """The synthetic inputs of finding 2, each the size and dimension of the real embeddings."""

    kinds: tuple[str, ...] = ("uniform", "gaussian", "skewed")
    clusters: int = 256
    exponent: float = 1.0
    spread: float = 0.5

    def make(self, n: int, d: int, seed: int) -> dict[str, np.ndarray]:
        makers: dict[str, Callable[[], np.ndarray]] = {
            "uniform": lambda: uniform_sphere(n, d, seed),
            "gaussian": lambda: isotropic_gaussian(n, d, seed),
            "skewed": lambda: zipf_mixture(n, d, seed, min(self.clusters, n), self.exponent, self.spread),
        }
        unknown = sorted(set(self.kinds) - set(makers))
        if unknown:
            raise RqsidError(f"unknown synthetic input kinds {unknown}; use {sorted(makers)}")
        return {kind: makers[kind]() for kind in self.kinds}

    def describe(self) -> dict[str, str]:
        """What each input of the experiment is (the synthetic kinds drawn, and the real embeddings)."""
        texts = {
            "uniform": "uniform on the unit sphere (normalised isotropic Gaussian)",
            "gaussian": "isotropic Gaussian (not normalised)",
            "skewed": f"{self.clusters} Gaussian clusters with Zipf(s={self.exponent}) sizes, noise norm "
                      f"{self.spread} around unit centres, normalised",
            "real": "the catalog's text embeddings",
        }
        return {kind: texts[kind] for kind in (*self.kinds, "real")}


# ---------------------------------------------------------------- quantizer sweeps (findings 1 and 2)


@dataclass
class SweepFit:
    source: str  # input name: "real", "uniform", "skewed", ... or a reference SID file
    method: str
    seed: int
    report: dict[str, Any]
    seconds: float = 0.0
    table: SidTable | None = None  # kept for real inputs (the generator study starts from it)


def fit_table(item_ids: Sequence[str], X: np.ndarray, config: QuantizerConfig, method: str, seed: int,
              progress: bool = False) -> tuple[SidTable, float]:
    """SIDs of X from a fresh tokenizer (method, seed) and the seconds the fit + encode took."""
    from rqsid.quantize import make_tokenizer

    started = time.perf_counter()
    tokenizer = make_tokenizer(config.model_copy(update={"method": method, "seed": seed})).fit(X, progress=progress)
    table = assign_sids(item_ids, tokenizer.encode(X), tokenizer.codebook_sizes)
    return table, time.perf_counter() - started


def quantize_sweep(make_inputs: Callable[[int], Mapping[str, np.ndarray]], methods: Sequence[str],
                   seeds: Sequence[int], config: QuantizerConfig, keep_tables: Iterable[str] = (),
                   item_ids: Mapping[str, Sequence[str]] | None = None, progress: bool = False,
                   log: Callable[[str], None] = lambda _: None) -> list[SweepFit]:
    """Fit every method on every input of every seed; `make_inputs(seed)` gives that seed's inputs
    (synthetic data is redrawn per seed, so the spread covers the data draw and the fit). SID tables
    are kept for the inputs named in `keep_tables`; `item_ids` names an input's rows (default 0..n-1)."""
    keep = set(keep_tables)
    fits = []
    for seed in seeds:
        for source, X in make_inputs(seed).items():
            ids = (item_ids or {}).get(source)
            ids = np.arange(len(X)).astype(str) if ids is None else ids
            for method in methods:
                table, seconds = fit_table(ids, X, config, method, seed, progress)
                report = report_to_json(table_report(table))
                fits.append(SweepFit(source, method, seed, report, seconds, table if source in keep else None))
                log(f"{source} {method} seed {seed}: Gini {' / '.join(_fmt(g) for g in layer_values(report, 'gini'))} "
                    f"({seconds:.1f} s)")
    return fits


def layer_values(report: Mapping[str, Any], key: str) -> list[float | None]:
    return [layer[key] for layer in report["layers"]]


def layer_rows(fit: SweepFit) -> list[dict[str, Any]]:
    """One row per layer: the labels of the fit and the layer's metrics."""
    rows = []
    for layer in fit.report["layers"]:
        rows.append({"source": fit.source, "method": fit.method, "seed": fit.seed, "level": layer["level"],
                     **{key: layer[key] for key in LAYER_KEYS},
                     "collision_rate": fit.report["collision_rate"], "fit_s": round(fit.seconds, 2)})
    return rows


def summarise(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("source", "method", "level"),
              metrics: Sequence[str] = LAYER_KEYS + ("collision_rate",)) -> list[dict[str, Any]]:
    """Mean and (population) std over seeds of each metric, per group of `keys`; `n` = seeds."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for group, members in groups.items():
        entry: dict[str, Any] = dict(zip(keys, group)) | {"n": len(members)}
        for metric in metrics:
            values = np.array([m[metric] for m in members if m.get(metric) is not None], dtype=np.float64)
            entry[f"{metric}_mean"] = float(values.mean()) if len(values) else None
            entry[f"{metric}_std"] = float(values.std()) if len(values) else None
        out.append(entry)
    return out


def profile(summary: Sequence[Mapping[str, Any]], source: str, method: str) -> list[Mapping[str, Any]]:
    """The summary rows of one (source, method), by level."""
    return sorted((r for r in summary if r["source"] == source and r["method"] == method), key=lambda r: r["level"])


def hourglass_gap(ginis: Sequence[float | None], level: int = 2) -> float | None:
    """Gini of layer `level` minus the larger of its neighbours' (positive = more concentrated);
    the hourglass of rqsid.metrics.is_hourglass is a gap above HOURGLASS_GINI_MARGIN."""
    middle = ginis[level - 1] if level - 1 < len(ginis) else None
    neighbours = [ginis[i] for i in (level - 2, level) if 0 <= i < len(ginis) and ginis[i] is not None]
    if middle is None or not neighbours:
        return None
    return float(middle - max(neighbours))


# ---------------------------------------------------------------- generator variants (findings 3 and 4)


def prune_variants(unpruned: SidTable, ks: Sequence[int], prune: PruneConfig) -> dict[str, SidTable]:
    """The SID tables the generator is trained on: baseline, layer `prune.level` dropped, top-K for each
    K in `ks`, and the automatically chosen K (rqsid.prune.choose_k with the config's bounds)."""
    from rqsid.prune import choose_k, drop_layer, prune_top_k

    level = prune.level
    variants = {"baseline": unpruned, f"drop layer {level}": drop_layer(unpruned, level)}
    size = unpruned.level_sizes[level - 1]
    for k in sorted(set(int(k) for k in ks)):
        if not 0 < k < size:
            raise RqsidError(f"top-K value {k} must be between 1 and {size - 1} (the level size minus one)")
        variants[f"top-{k}"] = prune_top_k(unpruned, k, level)
    auto = choose_k(unpruned, prune.gini_threshold, prune.max_collision_rate, level, prune.max_k, prune.fallback)
    variants[f"auto top-K (K={auto.k}{', dropped' if auto.dropped else ''})"] = auto.table
    return variants


def variant_key(table: SidTable) -> str:
    """Tables with equal keys hold the same SIDs (auto K may equal a listed K, 0 or the dropped layer)."""
    return json.dumps(table.pruning or {"method": "none"}, sort_keys=True)


def table_summary(table: SidTable, level: int = 2) -> dict[str, Any]:
    report = table_report(table)
    layer = report["layers"][level - 1]
    pruning = table.pruning or {}
    return {"k": int(pruning.get("k", 0)), "method": pruning.get("method", "none"),
            "collision_rate": float(report["collision_rate"]), "mean_sid_length": report["sid_length"]["mean"],
            "dedup_size": int(report["dedup_size"]), f"layer{level}_gini": layer["gini"],
            "layer_gini": layer_values(report_to_json(report), "gini")}


@dataclass
class GeneratorRun:
    variant: str
    seed: int
    metrics: dict[str, dict[str, float]]  # {"all"|"head"|"tail": {recall@5, ndcg@5, recall@10, ndcg@10, n}}
    hits: dict[str, np.ndarray]  # per test user: recall@10 and ndcg@10
    is_head: np.ndarray  # per test user: the target's unpruned layer-2 token is a head token
    stats: dict[str, Any] = field(default_factory=dict)


def run_generator(variant: str, table: SidTable, unpruned: SidTable, interactions, config: GeneratorConfig,
                  progress: bool = False, log: Callable[[str], None] = print) -> GeneratorRun:
    """Train the generator on `table`, evaluate it on the leave-one-out test split, keep per-user hits."""
    from rqsid.generator.data import SidVocab, eval_batch, sequences_from_interactions
    from rqsid.generator.evaluate import head_item_mask, ranking_metrics
    from rqsid.generator.train import evaluate_split, train_generator

    vocab = SidVocab.from_sid_table(table)
    seqs = sequences_from_interactions(interactions, vocab)
    trained = train_generator(seqs, vocab, config, progress=progress, log=log)
    head_items = head_item_mask(unpruned, vocab)
    started = time.perf_counter()
    metrics, ranked = evaluate_split(trained, seqs, "test", head_items, progress=progress)
    targets = eval_batch(seqs, np.arange(seqs.n_users), "test", config.max_history).targets
    per_user = ranking_metrics(ranked, targets)
    stats = {"train_seconds": trained.stats["train_seconds"], "wall_seconds": trained.stats["wall_seconds"],
             "epochs": trained.stats["epochs"], "best_epoch": trained.best.get("epoch"),
             "test_seconds": round(time.perf_counter() - started, 1), "n_users": int(seqs.n_users)}
    return GeneratorRun(variant, config.seed, metrics, {"recall@10": per_user["recall@10"], "ndcg@10": per_user["ndcg@10"]},
                        head_items[targets], stats)


def popularity_head_tail(unpruned: SidTable, interactions, metric: str = "recall@10") -> dict[str, float]:
    """Control for finding 3: the same head/tail split for a popularity ranker (the items most often seen
    before the test position), and how popular head and tail targets are in those histories. A gap that
    popularity shows as well comes from which items users buy, not from how the generator reads SIDs."""
    from rqsid.generator.data import SidVocab, eval_batch, item_counts_before, sequences_from_interactions
    from rqsid.generator.evaluate import head_item_mask, popularity_ranking, ranking_metrics

    vocab = SidVocab.from_sid_table(unpruned)
    seqs = sequences_from_interactions(interactions, vocab)
    targets = eval_batch(seqs, np.arange(seqs.n_users), "test", 1).targets
    counts = item_counts_before(seqs, vocab.n_items, "test")
    per_user = ranking_metrics(popularity_ranking(counts, seqs.n_users), targets)
    is_head = head_item_mask(unpruned, vocab)[targets]
    seen = counts[targets].astype(np.float64)
    return group_difference(per_user[metric], is_head) | {
        "metric": metric, "overall": float(per_user[metric].mean()),
        "head_target_count_mean": float(seen[is_head].mean()) if is_head.any() else float("nan"),
        "tail_target_count_mean": float(seen[~is_head].mean()) if (~is_head).any() else float("nan")}


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of a - b over the same users and its standard error (paired: the same targets)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"diff": float(d.mean()) if n else float("nan"), "se": se, "n": n}


def group_difference(values: np.ndarray, in_group: np.ndarray) -> dict[str, float]:
    """Mean inside the group minus mean outside it, with the two-sample standard error."""
    values = np.asarray(values, dtype=np.float64)
    a, b = values[in_group], values[~in_group]
    if len(a) < 2 or len(b) < 2:
        return {"head": float("nan"), "tail": float("nan"), "diff": float("nan"), "se": float("nan"),
                "ratio": float("nan"), "n_head": len(a), "n_tail": len(b)}
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return {"head": float(a.mean()), "tail": float(b.mean()), "diff": float(a.mean() - b.mean()), "se": se,
            "ratio": float(a.mean() / b.mean()) if b.mean() > 0 else float("inf"), "n_head": len(a), "n_tail": len(b)}


def generator_comparisons(runs: Sequence[GeneratorRun], metric: str = "recall@10") -> dict[str, Any]:
    """Per seed: head - tail of every variant, and every variant - baseline and - drop (paired)."""
    by_seed: dict[int, dict[str, GeneratorRun]] = {}
    for run in runs:
        by_seed.setdefault(run.seed, {})[run.variant] = run
    head_tail, versus = [], []
    for seed, variants in sorted(by_seed.items()):
        drop = next((name for name in variants if name.startswith("drop layer")), None)
        for name, run in variants.items():
            head_tail.append({"seed": seed, "variant": name, "metric": metric} | group_difference(run.hits[metric], run.is_head))
            refs = () if name == "baseline" else ("baseline", drop)
            for ref in refs:
                if ref and ref != name and ref in variants:
                    versus.append({"seed": seed, "variant": name, "versus": ref, "metric": metric}
                                  | paired_difference(run.hits[metric], variants[ref].hits[metric]))
    return {"metric": metric, "head_tail": head_tail, "versus": versus}


# ---------------------------------------------------------------- verdicts


@dataclass
class Finding:
    number: int
    claim: str
    verdict: str
    reason: str
    evidence: list[str] = field(default_factory=list)  # markdown lines (a table)

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "claim": self.claim, "verdict": self.verdict, "reason": self.reason}


CLAIMS = {
    1: "Residual quantization concentrates layer-2 tokens (low entropy, high Gini, large std): an hourglass.",
    2: "Uniform input embeddings show no hourglass; non-uniform ones do, because RQ amplifies the skew in layer 2.",
    3: "A generator does markedly better on head-token test targets than on tail-token ones.",
    4: "Dropping layer 2 helps the generator, and adaptive top-K removal helps more.",
}


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def _pm(row: Mapping[str, Any], metric: str, spec: str = ".3f") -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None:
        return "dropped"
    return f"{_fmt(mean, spec)} ± {_fmt(std, spec)}" if row.get("n", 1) > 1 else _fmt(mean, spec)


def _gap_of(rows: Sequence[Mapping[str, Any]]) -> float | None:
    return hourglass_gap([r["gini_mean"] for r in rows])


def _layer_table(summary: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]], label: str) -> list[str]:
    levels = max((r["level"] for r in summary), default=0)
    lines = [f"| {label} | method | seeds | " + " | ".join(f"L{n} Gini" for n in range(1, levels + 1))
             + " | " + " | ".join(f"L{n} entropy (norm)" for n in range(1, levels + 1))
             + " | L2 std | L2 gap | hourglass |",
             "| --- | --- | ---: |" + " ---: |" * (2 * levels + 3)]
    for source, method in pairs:
        rows = profile(summary, source, method)
        if not rows:
            continue
        gap = _gap_of(rows)
        std2 = _pm(rows[1], "std", ".1f") if len(rows) > 1 else "n/a"
        pad = ["-"] * (levels - len(rows))
        lines.append(f"| {source} | {method} | {rows[0]['n']} | " + " | ".join([_pm(r, "gini") for r in rows] + pad)
                     + " | " + " | ".join([_pm(r, "entropy_norm") for r in rows] + pad)
                     + f" | {std2} | {_fmt(gap, '+.3f')} | {'yes' if gap is not None and gap > HOURGLASS_GINI_MARGIN else 'no'} |")
    return lines


def finding_concentration(results: Mapping[str, Any]) -> Finding:
    """Finding 1 on the real embeddings: our RQ-VAE decides (the paper's tokenizer); residual k-means
    and the reference SIDs are shown beside it."""
    summary = results["tokenizers"]["summary"]
    pairs = list(dict.fromkeys((r["source"], r["method"]) for r in summary))
    evidence = _layer_table(summary, pairs, "SIDs")
    main = profile(summary, "real", "rqvae")
    if len(main) < 3:
        return Finding(1, CLAIMS[1], NOT_MEASURED, "our RQ-VAE with 3+ levels was not fitted on the real embeddings", evidence)
    gap = _gap_of(main)
    per_seed = [hourglass_gap([r["gini"] for r in sorted(rows, key=lambda r: r["level"])])
                for rows in _by_seed(results["tokenizers"]["rows"], "real", "rqvae")]
    seeds_with = sum(g is not None and g > HOURGLASS_GINI_MARGIN for g in per_seed)
    others = [f"{s}/{m}" for s, m in pairs if (s, m) != ("real", "rqvae")
              and (g := _gap_of(profile(summary, s, m))) is not None and g > HOURGLASS_GINI_MARGIN]
    ginis = " / ".join(_pm(r, "gini") for r in main)
    text = (f"our RQ-VAE layer Gini {ginis}: layer 2 minus the larger neighbour {_fmt(gap, '+.3f')} "
            f"(hourglass above +{HOURGLASS_GINI_MARGIN}), in {seeds_with} of {len(per_seed)} seeds")
    text += f"; other SIDs with an hourglass: {', '.join(others)}" if others else "; no other SIDs measured show one"
    if gap is not None and gap > HOURGLASS_GINI_MARGIN:
        return Finding(1, CLAIMS[1], REPRODUCED, text, evidence)
    if per_seed and all(g is not None and g > 0 for g in per_seed):
        return Finding(1, CLAIMS[1], PARTLY, text + "; layer 2 is the most concentrated layer in every seed, "
                       "but by less than the hourglass margin", evidence)
    if others:
        return Finding(1, CLAIMS[1], PARTLY, text + "; our RQ-VAE shows none", evidence)
    return Finding(1, CLAIMS[1], NOT_REPRODUCED, text, evidence)


def _by_seed(rows: Sequence[Mapping[str, Any]], source: str, method: str) -> list[list[Mapping[str, Any]]]:
    seeds: dict[int, list] = {}
    for row in rows:
        if row["source"] == source and row["method"] == method:
            seeds.setdefault(row["seed"], []).append(row)
    return [seeds[s] for s in sorted(seeds)]


def uniformity_verdict(summary: Sequence[Mapping[str, Any]], method: str, uniform: str = "uniform",
                       skewed: str = "skewed") -> tuple[str, str]:
    """(verdict, reason) of finding 2 for one method: no hourglass on the uniform input, an hourglass
    on the skewed one, and layer 2's Gini rising more than layer 1's from uniform to skewed."""
    u, s = profile(summary, uniform, method), profile(summary, skewed, method)
    if len(u) < 3 or len(s) < 3:
        return NOT_MEASURED, f"{method}: uniform and skewed inputs with 3+ levels were not both fitted"
    gap_u, gap_s = _gap_of(u), _gap_of(s)
    rise = [s[i]["gini_mean"] - u[i]["gini_mean"] for i in range(2)]
    spread = math.sqrt((s[1]["gini_std"] or 0) ** 2 + (u[1]["gini_std"] or 0) ** 2)
    uniform_flat = gap_u is not None and gap_u <= HOURGLASS_GINI_MARGIN
    skewed_hourglass = gap_s is not None and gap_s > HOURGLASS_GINI_MARGIN
    amplified = rise[1] > rise[0] and rise[1] > SIGNIFICANT_SE * spread
    reason = (f"{method}: L2 gap uniform {_fmt(gap_u, '+.3f')}, skewed {_fmt(gap_s, '+.3f')}; "
              f"Gini rise uniform -> skewed L1 {_fmt(rise[0], '+.3f')}, L2 {_fmt(rise[1], '+.3f')} (seed spread {_fmt(spread)})")
    if uniform_flat and skewed_hourglass:
        return REPRODUCED, reason
    if uniform_flat and amplified:
        return PARTLY, reason + "; skew raises layer 2 most, but not into an hourglass"
    return NOT_REPRODUCED, reason + ("" if uniform_flat else "; the uniform input already shows an hourglass")


def finding_uniformity(results: Mapping[str, Any]) -> Finding:
    """Finding 2: decided by our RQ-VAE; residual k-means reported beside it."""
    data = results.get("uniformity")
    if not data:
        return Finding(2, CLAIMS[2], NOT_MEASURED, "the uniformity experiment was not run")
    summary = data["summary"]
    sources = list(dict.fromkeys(r["source"] for r in summary))
    methods = list(dict.fromkeys(r["method"] for r in summary))
    evidence = _layer_table(summary, [(s, m) for m in methods for s in sources], "input")
    verdicts = {m: uniformity_verdict(summary, m) for m in methods}
    main = "rqvae" if "rqvae" in verdicts else methods[0]
    verdict, reason = verdicts[main]
    others = "; ".join(f"{v[1]} -> {v[0]}" for m, v in verdicts.items() if m != main)
    return Finding(2, CLAIMS[2], verdict, reason + (f" | {others}" if others else ""), evidence)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std()) if len(arr) > 1 else 0.0


def finding_head_tail(results: Mapping[str, Any]) -> Finding:
    """Finding 3 on the baseline SIDs: head - tail Recall@10 beyond 2 standard errors and head >= 1.5 x tail."""
    gen = results.get("generator")
    if not gen:
        return Finding(3, CLAIMS[3], NOT_MEASURED, "the generator was not trained (no interactions, or --no-generator)")
    rows = [r for r in gen["comparisons"]["head_tail"] if r["variant"] == "baseline"]
    metric = gen["comparisons"]["metric"]
    evidence = [f"| variant | seed | head {metric} | tail {metric} | head - tail | SE | head / tail | head users | tail users |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    evidence += [f"| {r['variant']} | {r['seed']} | {_fmt(r['head'], '.4f')} | {_fmt(r['tail'], '.4f')} | "
                 f"{_fmt(r['diff'], '+.4f')} | {_fmt(r['se'], '.4f')} | {_fmt(r['ratio'], '.2f')} | {r['n_head']} | {r['n_tail']} |"
                 for r in gen["comparisons"]["head_tail"]]
    control = gen.get("popularity")
    if control:
        evidence += [f"| popularity ranker (control) | 0 | {_fmt(control['head'], '.4f')} | {_fmt(control['tail'], '.4f')} | "
                     f"{_fmt(control['diff'], '+.4f')} | {_fmt(control['se'], '.4f')} | {_fmt(control['ratio'], '.2f')} | "
                     f"{control['n_head']} | {control['n_tail']} |", "",
                     f"Head targets were seen {_fmt(control['head_target_count_mean'], '.1f')} times on average in the "
                     f"histories before the test position, tail targets {_fmt(control['tail_target_count_mean'], '.1f')} times."]
    diff, diff_std = _mean_std([r["diff"] for r in rows])
    se = float(np.mean([r["se"] for r in rows]))
    ratio = float(np.mean([r["ratio"] for r in rows]))
    reason = (f"baseline head - tail {metric} {_fmt(diff, '+.4f')} (SE {_fmt(se, '.4f')}{_seed_spread(diff_std, len(rows))}), "
              f"head / tail {_fmt(ratio, '.2f')}")
    if control:
        reason += (f"; a popularity ranker shows head / tail {_fmt(control['ratio'], '.2f')} "
                   f"(head targets are {_fmt(control['head_target_count_mean'] / max(control['tail_target_count_mean'], 1e-9), '.1f')}x "
                   "as popular as tail ones)")
    if diff > SIGNIFICANT_SE * se and ratio >= MARKED_RATIO:
        return Finding(3, CLAIMS[3], REPRODUCED, reason, evidence)
    if diff > SIGNIFICANT_SE * se:
        return Finding(3, CLAIMS[3], PARTLY, reason + f"; significant but under the {MARKED_RATIO}x 'markedly' bar", evidence)
    return Finding(3, CLAIMS[3], NOT_REPRODUCED, reason + "; not significantly better on head targets", evidence)


def _versus(gen: Mapping[str, Any], variant_prefix: str, versus_prefix: str) -> list[Mapping[str, Any]]:
    return [r for r in gen["comparisons"]["versus"]
            if r["variant"].startswith(variant_prefix) and r["versus"].startswith(versus_prefix)]


def _seed_spread(std: float, seeds: int) -> str:
    return f", std over {seeds} generator seeds {_fmt(std, '.4f')}" if seeds > 1 else ", 1 generator seed: no seed spread"


def _effect(rows: Sequence[Mapping[str, Any]]) -> tuple[float, float, float, int]:
    """(mean diff over seeds, its std over seeds, mean paired SE, sign: +1 significant gain, -1 loss, 0 neither)."""
    diff, std = _mean_std([r["diff"] for r in rows])
    se = float(np.mean([r["se"] for r in rows]))
    sign = 1 if diff > SIGNIFICANT_SE * se else -1 if diff < -SIGNIFICANT_SE * se else 0
    return diff, std, se, sign


def finding_pruning(results: Mapping[str, Any]) -> Finding:
    """Finding 4: drop layer 2 vs baseline, and the automatically chosen top-K vs drop layer 2 (paired
    Recall@10 over the same test users). The listed K values are shown but do not decide: picking the
    best of them on the test split would flatter top-K."""
    gen = results.get("generator")
    if not gen:
        return Finding(4, CLAIMS[4], NOT_MEASURED, "the generator was not trained (no interactions, or --no-generator)")
    metric = gen["comparisons"]["metric"]
    evidence = [f"| SIDs | seed | K | collision rate | mean SID length | L2 Gini | Recall@5 | NDCG@5 | Recall@10 | NDCG@10 | "
                f"head R@10 | tail R@10 | train s | epochs |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for v in gen["variants"]:
        m = v["metrics"]
        evidence.append(f"| {v['variant']} | {v['seed']} | {v['k']} | {_fmt(v['collision_rate'], '.4f')} | "
                        f"{_fmt(v['mean_sid_length'], '.3f')} | {_fmt(v['layer2_gini'])} | "
                        + " | ".join(_fmt(m["all"][k], ".4f") for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"))
                        + f" | {_fmt(m['head']['recall@10'], '.4f')} | {_fmt(m['tail']['recall@10'], '.4f')} | "
                        f"{v['stats']['train_seconds']} | {v['stats']['epochs']} |")
    evidence += ["", f"Paired differences in {metric} (same test users):", "",
                 "| SIDs | versus | seed | difference | SE |", "| --- | --- | ---: | ---: | ---: |"]
    evidence += [f"| {r['variant']} | {r['versus']} | {r['seed']} | {_fmt(r['diff'], '+.4f')} | {_fmt(r['se'], '.4f')} |"
                 for r in gen["comparisons"]["versus"]]
    drop = _versus(gen, "drop layer", "baseline")
    auto = _versus(gen, "auto top-K", "drop layer")
    if not drop or not auto:
        return Finding(4, CLAIMS[4], NOT_MEASURED, "the drop-layer and automatic top-K variants were not both trained", evidence)
    d_diff, d_std, d_se, d_sign = _effect(drop)
    a_diff, a_std, a_se, a_sign = _effect(auto)
    auto_name = auto[0]["variant"]
    note = ""
    if auto_name.startswith("auto top-K (K=0"):
        note = "; the automatic K is 0 (layer 2 already under the Gini bound), so auto top-K = the baseline"
    elif "dropped" in auto_name:
        note = "; no K met the bounds, so auto top-K fell back to dropping the layer"
    reason = (f"drop layer 2 - baseline {metric} {_fmt(d_diff, '+.4f')} (SE {_fmt(d_se, '.4f')}{_seed_spread(d_std, len(drop))}); "
              f"{auto_name} - drop layer 2 {_fmt(a_diff, '+.4f')} (SE {_fmt(a_se, '.4f')}{_seed_spread(a_std, len(auto))}){note}")
    listed = [r for r in gen["comparisons"]["versus"] if r["variant"].startswith("top-") and r["versus"].startswith("drop layer")]
    if listed:
        best = max(listed, key=lambda r: r["diff"])
        reason += (f"; best listed K (chosen on the test split, so not used for the verdict): {best['variant']} - drop layer 2 "
                   f"{_fmt(best['diff'], '+.4f')} (SE {_fmt(best['se'], '.4f')}, seed {best['seed']})")
    if d_sign > 0 and a_sign > 0:
        return Finding(4, CLAIMS[4], REPRODUCED, reason, evidence)
    if d_sign < 0:  # the claim's first half is contradicted; beating a harmful drop proves nothing for top-K
        return Finding(4, CLAIMS[4], NOT_REPRODUCED, reason + "; dropping layer 2 significantly hurts", evidence)
    if d_sign > 0 or a_sign > 0:
        return Finding(4, CLAIMS[4], PARTLY, reason, evidence)
    return Finding(4, CLAIMS[4], NOT_REPRODUCED, reason + "; no significant difference", evidence)


def findings(results: Mapping[str, Any]) -> list[Finding]:
    return [finding_concentration(results), finding_uniformity(results), finding_head_tail(results),
            finding_pruning(results)]


# ---------------------------------------------------------------- the report


def render_report(results: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    """The markdown report: how it was made, a verdict table, then each finding with its numbers."""
    data, settings, timing = results["dataset"], results["settings"], results.get("timing", {})
    found = findings(results)
    lines = [f"# Hourglass study: {data['name']}", "",
             f"Made {results.get('made', '')} by: `{results.get('command', '')}`", "",
             f"Data: {data['n_items']} items, embeddings {data['dim']}-d ({data.get('embeddings', '')}); "
             + (f"{data.get('n_users', 0)} users with test targets" if results.get("generator")
                else f"{data.get('n_interactions', 0)} interactions (generator not run)")
             + f". Machine: {results.get('machine', '')}.",
             f"Settings: {json.dumps(settings, sort_keys=True)}", "",
             f"Wall time {_fmt(timing.get('total_s'), '.0f')} s: "
             + ", ".join(f"{s['name']} {s['wall_s']:.0f} s" for s in timing.get("stages", [])), "",
             "## Verdicts", "", "| # | claim (Kuai et al. 2024) | verdict | numbers |", "| ---: | --- | --- | --- |"]
    lines += [f"| {f.number} | {f.claim} | **{f.verdict}** | {f.reason} |" for f in found]
    lines += ["", f"Rules: an hourglass is a layer-2 Gini more than {HOURGLASS_GINI_MARGIN} above the larger of its "
              f"neighbours' (mean over seeds; `rqsid.metrics.is_hourglass`). A difference counts when it exceeds "
              f"{SIGNIFICANT_SE:g} standard errors; 'markedly' (finding 3) also needs head >= {MARKED_RATIO}x tail. "
              "Values are mean ± std over seeds where there are several."]
    sections = {1: "tokenizers", 2: "uniformity", 3: "head_tail", 4: "pruning"}
    for f in found:
        lines += ["", f"## {f.number}. {f.claim}", "", f"**{f.verdict}**: {f.reason}", ""]
        if f.number == 2 and results.get("uniformity"):
            lines += [f"- {name}: {text}" for name, text in results["uniformity"].get("inputs", {}).items()] + [""]
        lines += f.evidence
        for name, path in (plots or {}).items():
            if name.startswith(sections[f.number]):
                lines += ["", f"![{name}]({path})"]
    return "\n".join(lines) + "\n"


def write_report(results: Mapping[str, Any], out_dir: str | Path, plots: Mapping[str, str] | None = None) -> Path:
    """report.md and results.json in out_dir; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(results) | {"findings": [f.as_dict() for f in findings(results)]}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    path = out / "report.md"
    path.write_text(render_report(results, plots))
    return path


def rerender_report(out_dir: str | Path) -> Path:
    """Rewrite report.md of a finished study from its results.json and plots/ (after the writer changed)."""
    out = Path(out_dir)
    if not (out / "results.json").exists():
        raise RqsidError(f"{out} has no results.json: run the study first")
    results = json.loads((out / "results.json").read_text())
    plots = {p.stem: f"plots/{p.name}" for p in sorted((out / "plots").glob("*.png"))}
    return write_report(results, out, plots)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
