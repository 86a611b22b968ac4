"""The re-index flow: catalog -> GX catalog suite (bad rows quarantined) -> embeddings (Dask) -> GX
embedding suite -> fit or reuse the RQ-VAE -> SIDs -> report -> GX distribution gate -> adaptive
pruning and the gate again -> an index version published atomically, or nothing when the gate fails.

A nightly run keeps the SIDs of unchanged items: while the catalog has not drifted past the
thresholds it reuses the published tokenizer, encodes only new and changed items, and keeps the
published pruning and dedup numbers; it reports how many SIDs changed against the previous version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import ValidationError

from flows.audit import drift_verdict, gate_verdict, pruning_verdict
from flows.common import FlowRecorder, catalog_stage, embed_stage, flow_run_id
from rqsid.config import EmbedConfig, QuantizerConfig, RqsidConfig
from rqsid.home import ProjectHome
from rqsid.index import balance_trend, index_manifest
from rqsid.locks import catalog_lock
from rqsid.plots import plot_pruning, plot_trend
from rqsid.sources import DEMO_ITEMS, catalog_name_of
from tasks.common import GateFailed, registry
from tasks.index import build_sids, index_inputs_key, index_version, measure_drift, publish_index, reuse_published
from tasks.tokenizer import fit_tokenizer, published_tokenizer

TREND_VERSIONS = 14  # index versions in the balance trend plot


def _tokenizer_reason(current: Path | None, reusable: bool, refit: bool | None, drift, config: RqsidConfig) -> str:
    """Why the tokenizer is fitted or reused, in words (`drift` is measured only when reuse was possible)."""
    if current is None:
        return "no published index yet"
    if not reusable:
        return "the published one was made with another embed or quantizer config"
    if refit:
        return "a refit was requested"
    verdict = drift_verdict(drift.report.as_dict(), config.drift)
    if refit is False:
        return f"reuse was requested ({verdict}); SIDs of unchanged items kept"
    return verdict if drift.report.drifted else f"{verdict}; SIDs of unchanged items kept"


def _tokenizer_reusable(index_dir: Path | None, config: RqsidConfig) -> bool:
    """The published tokenizer can encode today's items when it was made with today's embed and quantizer
    config (read through today's models, so that fields added since then take their defaults)."""
    if index_dir is None:
        return False
    made_with = index_manifest(index_dir).get("config", {})
    try:
        return (EmbedConfig.model_validate(made_with.get("embed", {})).identity() == config.embed.identity()
                and QuantizerConfig.model_validate(made_with.get("quantizer", {})).identity() == config.quantizer.identity())
    except ValidationError:
        return False


@flow(name="reindex", log_prints=True)
def reindex(
    catalog: str | None = None,
    interactions: str | None = None,
    config: RqsidConfig | None = None,
    refit: bool | None = None,
    demo_items: int = DEMO_ITEMS,
    lock_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Build and publish an index version for a catalog (None = the synthetic demo catalog).

    refit: True fits a new tokenizer; False reuses the published one; None decides by drift.
    lock_wait_s: how long to wait for another running re-index of the same catalog before refusing."""
    cfg = config or RqsidConfig()
    logger = get_run_logger()
    recorder = FlowRecorder("reindex", catalog_name_of(catalog), cfg)
    with catalog_lock(ProjectHome.default().root, catalog_name_of(catalog), lock_wait_s, "reindex"), recorder.run():
        cat = catalog_stage(recorder, catalog, interactions, demo_items)
        current = registry(cat.name).current_path()
        emb = embed_stage(recorder, cat, cfg, current)

        drift = None
        reusable = _tokenizer_reusable(current, cfg)
        with recorder.stage("tokenizer") as stage:
            if refit is not True and reusable:
                # today's codes under the published tokenizer: carried for unchanged items, encoded for the rest
                drift = measure_drift(cat, emb, current, cfg.drift, cfg.prune.level)
                stage.compute_s += drift.compute_s
                stage.metrics |= {f"drift.{k}": v for k, v in drift.report.as_dict().items() if isinstance(v, (int, float))}
            why = _tokenizer_reason(current, reusable, refit, drift, cfg)
            if refit is None or not reusable:
                refit = not reusable or drift.report.drifted
            tok = (fit_tokenizer(emb, cfg.quantizer, max_collision_rate=cfg.gate.max_collision_rate) if refit
                   else published_tokenizer(current))
            stage.compute_s += tok.compute_s
            stage.lineage = {"tokenizer": tok.version}
            stage.metrics |= {"recon_error": tok.recon_error, "refit": float(refit), "reused": float(tok.reused),
                              "levels": len(tok.level_sizes)}  # the code space is sized from the catalog
            if refit:
                kind, history = tok.training_history()
                recorder.tracker.log_curve(stage.run_id, kind, history)  # reconstruction, utilisation per epoch
                if not tok.reused:
                    recorder.log_file(tok.model_dir, "rqvae")
            recorder.decide("tokenizer", f"{'fitted a new tokenizer' if refit else 'reused the published tokenizer'}: {why}"
                            + (" (its fit was already stored)" if refit and tok.reused else ""),
                            {"tokenizer.refit": float(refit)})

        key = index_inputs_key(cat, emb, tok, cfg.prune, cfg.gate)
        if current is not None and index_manifest(current).get("inputs_key") == key:
            index = reuse_published(cat.name, current.name)
            recorder.decide("publication", f"kept index {index.version}: it was built from the same inputs")
        else:
            base = None if refit else current
            version = index_version(key, base.name if base else None)
            index = reuse_published(cat.name, version)
            if index is None:
                sids = _sids_stage(recorder, version, cat, emb, tok, cfg, base, drift)
                index = _publish_stage(recorder, version, cat, emb, tok, sids, cfg, key, refit, base, drift)
                recorder.decide("publication", f"published index {index.version} as current")
            else:
                recorder.decide("publication", f"re-published index {index.version}: it was built before from the same inputs")
        recorder.lineage["index"] = index.version
        recorder.links["published index"] = str(index.path)
        _log_trend(recorder, cat.name, cfg)
    result = {
        "catalog_name": cat.name,
        "index_version": index.version,
        "index_path": str(index.path),
        "reused": index.reused,
        "refit": bool(refit),
        "k": index.manifest.get("k"),
        "sid_changes": index.manifest.get("sid_changes"),
        "drift": drift.report.as_dict() if drift else None,
        "mlflow_run_id": recorder.run_id,
        "timing": recorder.timing(),
    }
    if result["sid_changes"]:
        logger.info("SIDs vs the previous version: %(sids_changed)d changed, %(sids_kept)d kept", result["sid_changes"])
    return result


def _log_trend(recorder: FlowRecorder, catalog_name: str, cfg: RqsidConfig) -> None:
    """Per-layer Gini and entropy of the catalog's last index versions, this one last, on the flow's run."""
    points = balance_trend(registry(catalog_name), TREND_VERSIONS)
    title = f"{catalog_name}: per-layer balance of the last {len(points)} index versions"
    recorder.log_plot(lambda path: plot_trend(points, path, cfg.gate.max_layer2_gini, title), "trend_balance")


def _sids_stage(recorder: FlowRecorder, version: str, cat, emb, tok, cfg: RqsidConfig, base: Path | None, drift):
    """SIDs, the gate and pruning; logs the figures before and after pruning and the decisions made on them."""
    with recorder.stage("sids") as stage:
        try:
            sids = build_sids(cat, emb, tok, cfg.prune, cfg.gate, base=base,
                              carried_codes=drift.codes if (drift is not None and base is not None) else None)
        except GateFailed as err:
            gates = getattr(err, "details", [])
            recorder.log_json(gates, "gx/distribution.json")
            stage.metrics = {"distribution_gate_success": 0.0, **_gate_metrics(gates)}
            recorder.decide("gate", gate_verdict(gates[-1], cfg.gate) + "; nothing was published", warn=True)
            raise
        stage.compute_s = sids.compute_s
        stage.metrics = {"k": sids.k, "dropped": float(sids.dropped), "gate_runs": len(sids.gates),
                         "distribution_gate_success": 1.0, **_gate_metrics(sids.gates)}
        if sids.sid_changes:
            stage.metrics |= {f"sid_changes.{k}": v for k, v in sids.sid_changes.items()}
        recorder.tracker.log_report(sids.unpruned_report, "before_pruning")
        recorder.tracker.log_report(sids.report, "sids")
        recorder.log_json(sids.gates, "gx/distribution.json")
        recorder.log_json(sids.prune_trace, "prune_trace.json")
        removed = sids.table.removed_codes()
        stage.compute_s += recorder.log_plot(
            lambda path: plot_pruning(sids.unpruned_report, sids.report, path, removed, f"{cat.name} {version}"),
            "pruning_before_after")
        pruned = len(sids.gates) > 1
        for gate in sids.gates:
            recorder.decide("gate", gate_verdict(gate, cfg.gate), warn=not gate["success"])
        recorder.decide("pruning", pruning_verdict(sids.unpruned_report, sids.report, sids.k, sids.dropped, pruned,
                                                   cfg.prune.level), {"prune.k": sids.k})
    return sids


def _gate_metrics(gates: list[dict]) -> dict[str, float]:
    """What each gate run judged and its verdict: `gate.before_pruning.layer2_gini`, `gate.after_pruning.passed`."""
    out = {}
    for gate in gates:
        label = "after_pruning" if gate["when"] == "after pruning" else "before_pruning"
        out |= {f"gate.{label}.{name}": value for name, value in gate["observed"].items()}
        out |= {f"gate.{label}.passed": float(gate["success"]), f"gate.{label}.k": gate["k"]}
    return out


def _publish_stage(recorder: FlowRecorder, version, cat, emb, tok, sids, cfg: RqsidConfig, key, refit, base, drift):
    with recorder.stage("publish") as stage:
        extra = {
            "inputs_key": key,
            "refit": bool(refit),
            "base": base.name if base else None,
            "drift": drift.report.as_dict() if drift else None,
            "config": cfg.model_dump(mode="json"),
            "prefect_flow_run_id": flow_run_id(),
            "mlflow_run_id": recorder.run_id,
            "quarantined": cat.n_quarantined,
        }
        index = publish_index(version, cat, emb, tok, sids, extra)
        stage.compute_s, stage.lineage = index.compute_s, {"index": version}
        recorder.log_file(index.path / "sids.parquet", "index")
        recorder.log_file(index.path / "manifest.json", "index")
    return index
