"""The study's report: report.md (how it was made, the verdict table, each finding with its numbers and
plots) and results.json, both from the typed results; `rerender_report` rewrites report.md of a finished
study from its results.json (after the writer changed), without measuring anything again."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from rqsid import RqsidError
from rqsid.metrics import HOURGLASS_GINI_MARGIN
from rqsid.study.results import StudyResults
from rqsid.study.statistics import fmt
from rqsid.study.verdicts import MARKED_RATIO, SIGNIFICANT_SE, findings


def render_report(results: StudyResults, plots: Mapping[str, str] | None = None) -> str:
    """The markdown report: how it was made, a verdict table, then each finding with its numbers."""
    data, timing = results.dataset, results.timing
    found = findings(results)
    lines = [f"# Hourglass study: {data.name}", "",
             f"Made {results.made} by: `{results.command}`", "",
             f"Data: {data.n_items} items, embeddings {data.dim}-d ({data.embeddings}); "
             + (f"{data.n_users or 0} users with test targets" if results.generator
                else f"{data.n_interactions} interactions (generator not run)")
             + f". Machine: {results.machine}.",
             f"Settings: {json.dumps(results.settings.model_dump(), sort_keys=True)}", "",
             f"Wall time {fmt(timing.get('total_s'), '.0f')} s: "
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
        if f.number == 2 and results.uniformity:
            lines += [f"- {name}: {text}" for name, text in results.uniformity.inputs.items()] + [""]
        lines += f.evidence
        for name, path in (plots or {}).items():
            if name.startswith(sections[f.number]):
                lines += ["", f"![{name}]({path})"]
    return "\n".join(lines) + "\n"


def write_report(results: StudyResults, out_dir: str | Path, plots: Mapping[str, str] | None = None) -> Path:
    """report.md and results.json (with the verdicts) in out_dir; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = results.model_copy(update={"findings": [f.as_dict() for f in findings(results)]})
    results.write(out / "results.json")
    path = out / "report.md"
    path.write_text(render_report(results, plots))
    return path


def rerender_report(out_dir: str | Path) -> Path:
    """Rewrite report.md of a finished study from its results.json and plots/ (after the writer changed);
    plots keep the order of the report being replaced, so an unchanged writer rewrites the same file."""
    out = Path(out_dir)
    if not (out / "results.json").exists():
        raise RqsidError(f"{out} has no results.json: run the study first")
    plots = {p.stem: f"plots/{p.name}" for p in sorted((out / "plots").glob("*.png"))}
    old = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    placed = {name: old.find(f"![{name}]") for name in plots}
    order = sorted(plots, key=lambda name: (placed[name] < 0, placed[name]))
    return write_report(StudyResults.read(out / "results.json"), out, {name: plots[name] for name in order})
