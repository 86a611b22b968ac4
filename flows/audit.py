"""What a reviewer reads about a flow run: one line per decision (drift, tokenizer, gate, pruning, publication,
promotion), the run's summary in markdown (a Prefect artifact of the flow run, and the description of its MLflow
run), the links between the two UIs, and the description of a registered model version.

Everything here is text made from figures, except `publish_summary`, which hands the summary to Prefect.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rqsid.config import DriftConfig, GateConfig, OrchestrationConfig

MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"  # `rqsid ui`


@dataclass
class Decision:
    flow: str  # the flow run that made it
    name: str  # drift, tokenizer, gate, pruning, publication, promotion
    verdict: str  # one line for a person
    figures: dict[str, float] = field(default_factory=dict)  # what it was decided on, as MLflow metrics


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- verdicts


_SIGNALS = {"new_share": "new share", "recon_ratio": "reconstruction ratio", "layer2_gini": "layer-2 Gini"}


def drift_verdict(report: Mapping[str, Any], config: DriftConfig) -> str:
    """'drift detected: new share 0.130 > 0.1', or why there is none."""
    if report["drifted"]:
        signals = [_SIGNALS.get(text.split(" ")[0], text.split(" ")[0]) + text[text.index(" "):] for text in report["exceeded"]]
        return "drift detected: " + "; ".join(signals)
    within = [f"new share {report['new_share']:.3f} <= {config.max_new_share}"]
    if report.get("recon_ratio") is not None:
        within.append(f"reconstruction ratio {report['recon_ratio']:.3f} <= {config.max_recon_ratio}")
    if report.get("layer2_gini_merged") is not None:
        within.append(f"layer-2 Gini {report['layer2_gini_merged']:.3f} <= {config.max_new_layer2_gini}")
    changed = report["n_new"] + report["n_changed"]
    return f"no drift: {changed} new or changed of {report['n_items']} items; " + ", ".join(within)


def gate_verdict(gate: Mapping[str, Any], config: GateConfig) -> str:
    """'failed before pruning: layer-2 Gini 0.444 > 0.4 (collisions 0.050 <= 0.2)'."""
    seen = gate["observed"]
    checks = []
    if "layer2_gini" in seen:
        checks.append(("layer-2 Gini", seen["layer2_gini"], config.max_layer2_gini))
    checks.append(("collisions", seen["collision_rate"], config.max_collision_rate))
    over = [f"{name} {value:.4g} > {bound}" for name, value, bound in checks if value > bound]
    under = [f"layer {key.removeprefix('l').removesuffix('_utilisation')} utilisation {value:.4g} < {config.min_utilisation}"
             for key, value in seen.items() if key.endswith("_utilisation") and value < config.min_utilisation]
    within = [f"{name} {value:.4g} <= {bound}" for name, value, bound in checks if value <= bound]
    if gate["success"]:
        return f"passed {gate['when']}: " + ", ".join(within)
    return f"failed {gate['when']}: " + "; ".join(over + under) + (f" ({', '.join(within)})" if within else "")


def pruning_verdict(before: Mapping[str, Any], after: Mapping[str, Any], k: int, dropped: bool, pruned: bool,
                    level: int) -> str:
    """What pruning did to layer `level`: not needed, kept the published K, removed K tokens, or dropped it."""
    b, a = before["layers"][level - 1], after["layers"][level - 1]
    collisions = f"collisions {before['collision_rate']:.4g} -> {after['collision_rate']:.4g}"
    if dropped:
        return f"no K met both bounds: layer {level} dropped (Gini {b['gini']:.4g} before), {collisions}"
    if not pruned:
        return "not needed: the gate passed before pruning (K = 0)" if not k else \
            f"kept the published pruning (K = {k}): the gate passed with it"
    return (f"K = {k} of {b['k']} layer-{level} tokens removed: layer-{level} Gini {b['gini']:.4g} -> "
            f"{a['gini']:.4g}, {collisions}")


def promotion_verdict(version: int, promoted: bool, champion_version: int | None, serving: int | None,
                      challenger: Mapping[str, float], champion: Mapping[str, float] | None, rule: str, serving_note: str) -> str:
    """Why a model version was, or was not, made the champion: both models' figures on the same validation
    users of today's data (tasks.champion.contest) and the paired rule."""
    ours = _contest_figures(challenger)
    if champion_version is None:
        return f"v{version} is the first champion: {ours}"
    if champion_version == version:
        return f"v{version} is already the champion: {ours}"
    theirs = _contest_figures(champion) if champion else "n/a"
    if promoted:
        return f"v{version} promoted to champion over v{champion_version}: {ours} vs {theirs} ({rule})"
    now = f"; the champion now serves as v{serving} ({serving_note})" if serving != champion_version else f" ({serving_note})"
    return f"v{version} not promoted, champion stays v{champion_version}: {ours} vs {theirs} (rule: {rule}){now}"


def _contest_figures(figures: Mapping[str, float]) -> str:
    """{"recall@10": .., "ndcg@10": .., "n": ..} -> 'valid Recall@10 0.0812, valid NDCG@10 0.0450 (5000 users)'."""
    shown = ", ".join(f"valid {_label('valid.all.' + key.replace('@', '_at_')).split(' ', 1)[1]} {value:.4f}"
                      for key, value in figures.items() if key != "n")
    return f"{shown} ({int(figures.get('n', 0))} users)"


def _label(metric: str) -> str:
    """'valid.all.recall_at_10' -> 'valid Recall@10'."""
    split, _, name = metric.partition(".all.")
    name = name.replace("_at_", "@").replace("recall", "Recall").replace("ndcg", "NDCG")
    return f"{split} {name}" if name else metric


# ---------------------------------------------------------------- links between the UIs


def mlflow_ui_url(orchestration: OrchestrationConfig) -> str:
    """Where reviewers open MLflow: the configured UI, the tracking server, else `rqsid ui`'s address."""
    uri = orchestration.mlflow_tracking_uri or ""
    return (orchestration.mlflow_ui_url or (uri if uri.startswith(("http://", "https://")) else MLFLOW_UI_DEFAULT)).rstrip("/")


def mlflow_run_url(base: str, experiment_id: str, run_id: str) -> str:
    from tasks.tracking import TRAINING_VIEW

    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def prefect_flow_run_url(flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI of the API this process uses (None outside a flow run)."""
    if not flow_run_id:
        return None
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value() or os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


# ---------------------------------------------------------------- the summary of a flow run


def summary_markdown(flow: str, catalog: str, status: str, decisions: list[Decision], timing: Mapping[str, Any],
                     links: Mapping[str, str]) -> str:
    """A flow run in a few lines: its decisions and the figures behind them, its time, where to look next."""
    lines = [f"## {flow} of catalog `{catalog}`: {status}", ""]
    if decisions:
        lines += ["| flow | decision | verdict | figures |", "| --- | --- | --- | --- |"]
        for d in decisions:
            figures = ", ".join(f"{name} {_num(value)}" for name, value in d.figures.items())
            lines.append(f"| {d.flow} | {d.name} | {d.verdict.replace('|', '/')} | {figures} |")
        lines.append("")
    total, compute = timing.get("total_s", 0.0), timing.get("compute_s", 0.0)
    lines += [f"**Time**: {total:.1f} s wall, {compute:.1f} s library compute "
              f"(orchestration {timing.get('orchestration_share', 0.0):.0%}).", ""]
    for name, target in links.items():
        shown = f"[{target}]({target})" if target.startswith("http") else f"`{target}`"
        lines.append(f"- {name}: {shown}")
    return "\n".join(lines) + "\n"


def artifact_key(flow: str, catalog: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes; one key per flow and catalog keeps the
    nights of a catalog as versions of one artifact."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{flow}-{catalog}".lower()).strip("-") or "rqsid"


def publish_summary(markdown: str, flow: str, catalog: str) -> str | None:
    """The summary as a markdown artifact of the current Prefect flow run; None outside a flow run."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    if not flow_run.id:
        return None
    return str(create_markdown_artifact(markdown, key=artifact_key(flow, catalog),
                                        description=f"summary of {flow} of catalog {catalog}"))


# ---------------------------------------------------------------- registered model versions


HEADLINE = ("valid.all.recall_at_10", "valid.all.ndcg_at_10", "test.all.recall_at_10", "test.all.ndcg_at_10",
            "test.tail.recall_at_10")


def headline_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The few figures a registry page shows ('valid.recall_at_10', ...): all users, and the tail."""
    return {key.replace(".all.", "."): metrics[key] for key in HEADLINE if key in metrics}


def model_description(catalog: str, index_manifest: Mapping[str, Any], metrics: Mapping[str, float],
                      promotion: str, run_url: str) -> str:
    """A model version's description, from the run that made it: what data, what figures, why (not) promoted."""
    versions = index_manifest.get("versions", {})
    data = ", ".join(f"{kind} `{versions[kind]}`" for kind in ("catalog", "embeddings", "tokenizer") if versions.get(kind))
    pruning = index_manifest.get("k") or 0
    figures = "; ".join(f"{_label(key)} {metrics[key]:.4f}" for key in HEADLINE if key in metrics)
    return (f"Generative retriever of catalog `{catalog}`, trained on SID index `{index_manifest.get('version', '?')}` "
            f"({index_manifest.get('n_items', '?')} items, layer-2 pruning K = {pruning}; {data}). "
            f"It only works with that index.\n\n"
            f"Figures: {figures}.\n\nPromotion: {promotion}.\n\nMLflow run: {run_url}")
