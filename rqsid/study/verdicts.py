"""The verdicts on the four findings of Kuai et al. (2024), computed from the numbers alone, each with
the reason (the figures it rests on) and its evidence (markdown table lines) for the report.

Rules: an hourglass is a layer-2 Gini more than HOURGLASS_GINI_MARGIN above the larger of its
neighbours' (mean over seeds); a difference counts when it exceeds SIGNIFICANT_SE standard errors;
"markedly better" (finding 3) also needs head >= MARKED_RATIO x tail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rqsid.metrics import HOURGLASS_GINI_MARGIN
from rqsid.study.results import GeneratorResults, StudyResults, TokenizerResults, UniformityResults
from rqsid.study.statistics import fmt, hourglass_gap, mean_std, profile

# A difference counts when it exceeds this many standard errors (about a 95% two-sided interval).
SIGNIFICANT_SE = 2.0
# "Markedly better" (finding 3): the head's Recall@10 at least this multiple of the tail's.
MARKED_RATIO = 1.5
REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "partly reproduced", "not reproduced", "not measured"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_MEASURED)


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


def _pm(row: Mapping[str, Any], metric: str, spec: str = ".3f") -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None:
        return "dropped"
    return f"{fmt(mean, spec)} ± {fmt(std, spec)}" if row.get("n", 1) > 1 else fmt(mean, spec)


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
                     + f" | {std2} | {fmt(gap, '+.3f')} | {'yes' if gap is not None and gap > HOURGLASS_GINI_MARGIN else 'no'} |")
    return lines


def finding_concentration(tokenizers: TokenizerResults | None) -> Finding:
    """Finding 1 on the real embeddings: our RQ-VAE decides (the paper's tokenizer); residual k-means
    and the reference SIDs are shown beside it."""
    if tokenizers is None:
        return Finding(1, CLAIMS[1], NOT_MEASURED, "the tokenizers were not fitted on the real embeddings")
    summary = tokenizers.summary
    pairs = list(dict.fromkeys((r["source"], r["method"]) for r in summary))
    evidence = _layer_table(summary, pairs, "SIDs")
    main = profile(summary, "real", "rqvae")
    if len(main) < 3:
        return Finding(1, CLAIMS[1], NOT_MEASURED, "our RQ-VAE with 3+ levels was not fitted on the real embeddings", evidence)
    gap = _gap_of(main)
    per_seed = [hourglass_gap([r["gini"] for r in sorted(rows, key=lambda r: r["level"])])
                for rows in _by_seed(tokenizers.rows, "real", "rqvae")]
    seeds_with = sum(g is not None and g > HOURGLASS_GINI_MARGIN for g in per_seed)
    others = [f"{s}/{m}" for s, m in pairs if (s, m) != ("real", "rqvae")
              and (g := _gap_of(profile(summary, s, m))) is not None and g > HOURGLASS_GINI_MARGIN]
    ginis = " / ".join(_pm(r, "gini") for r in main)
    text = (f"our RQ-VAE layer Gini {ginis}: layer 2 minus the larger neighbour {fmt(gap, '+.3f')} "
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
    reason = (f"{method}: L2 gap uniform {fmt(gap_u, '+.3f')}, skewed {fmt(gap_s, '+.3f')}; "
              f"Gini rise uniform -> skewed L1 {fmt(rise[0], '+.3f')}, L2 {fmt(rise[1], '+.3f')} (seed spread {fmt(spread)})")
    if uniform_flat and skewed_hourglass:
        return REPRODUCED, reason
    if uniform_flat and amplified:
        return PARTLY, reason + "; skew raises layer 2 most, but not into an hourglass"
    return NOT_REPRODUCED, reason + ("" if uniform_flat else "; the uniform input already shows an hourglass")


def finding_uniformity(uniformity: UniformityResults | None) -> Finding:
    """Finding 2: decided by our RQ-VAE; residual k-means reported beside it."""
    if uniformity is None:
        return Finding(2, CLAIMS[2], NOT_MEASURED, "the uniformity experiment was not run")
    summary = uniformity.summary
    sources = list(dict.fromkeys(r["source"] for r in summary))
    methods = list(dict.fromkeys(r["method"] for r in summary))
    evidence = _layer_table(summary, [(s, m) for m in methods for s in sources], "input")
    verdicts = {m: uniformity_verdict(summary, m) for m in methods}
    main = "rqvae" if "rqvae" in verdicts else methods[0]
    verdict, reason = verdicts[main]
    others = "; ".join(f"{v[1]} -> {v[0]}" for m, v in verdicts.items() if m != main)
    return Finding(2, CLAIMS[2], verdict, reason + (f" | {others}" if others else ""), evidence)


def finding_head_tail(gen: GeneratorResults | None) -> Finding:
    """Finding 3 on the baseline SIDs: head - tail Recall@10 beyond 2 standard errors and head >= 1.5 x tail."""
    if gen is None:
        return Finding(3, CLAIMS[3], NOT_MEASURED, "the generator was not trained (no interactions, or --no-generator)")
    rows = [r for r in gen.comparisons["head_tail"] if r["variant"] == "baseline"]
    metric = gen.comparisons["metric"]
    evidence = [f"| variant | seed | head {metric} | tail {metric} | head - tail | SE | head / tail | head users | tail users |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    evidence += [f"| {r['variant']} | {r['seed']} | {fmt(r['head'], '.4f')} | {fmt(r['tail'], '.4f')} | "
                 f"{fmt(r['diff'], '+.4f')} | {fmt(r['se'], '.4f')} | {fmt(r['ratio'], '.2f')} | {r['n_head']} | {r['n_tail']} |"
                 for r in gen.comparisons["head_tail"]]
    control = gen.popularity
    if control:
        evidence += [f"| popularity ranker (control) | 0 | {fmt(control['head'], '.4f')} | {fmt(control['tail'], '.4f')} | "
                     f"{fmt(control['diff'], '+.4f')} | {fmt(control['se'], '.4f')} | {fmt(control['ratio'], '.2f')} | "
                     f"{control['n_head']} | {control['n_tail']} |", "",
                     f"Head targets were seen {fmt(control['head_target_count_mean'], '.1f')} times on average in the "
                     f"histories before the test position, tail targets {fmt(control['tail_target_count_mean'], '.1f')} times."]
    diff, diff_std = mean_std([r["diff"] for r in rows])
    se = float(np.mean([r["se"] for r in rows]))
    ratio = float(np.mean([r["ratio"] for r in rows]))
    reason = (f"baseline head - tail {metric} {fmt(diff, '+.4f')} (SE {fmt(se, '.4f')}{_seed_spread(diff_std, len(rows))}), "
              f"head / tail {fmt(ratio, '.2f')}")
    if control:
        reason += (f"; a popularity ranker shows head / tail {fmt(control['ratio'], '.2f')} "
                   f"(head targets are {fmt(_popularity_ratio(control), '.1f')}x "
                   "as popular as tail ones)")
    if diff > SIGNIFICANT_SE * se and ratio >= MARKED_RATIO:
        return Finding(3, CLAIMS[3], REPRODUCED, reason, evidence)
    if diff > SIGNIFICANT_SE * se:
        return Finding(3, CLAIMS[3], PARTLY, reason + f"; significant but under the {MARKED_RATIO}x 'markedly' bar", evidence)
    return Finding(3, CLAIMS[3], NOT_REPRODUCED, reason + "; not significantly better on head targets", evidence)


def _popularity_ratio(control: Mapping[str, Any]) -> float:
    """How many times as often head targets were seen before the test position as tail targets."""
    return control["head_target_count_mean"] / max(control["tail_target_count_mean"], 1e-9)


def _versus(gen: GeneratorResults, variant_prefix: str, versus_prefix: str) -> list[Mapping[str, Any]]:
    return [r for r in gen.comparisons["versus"]
            if r["variant"].startswith(variant_prefix) and r["versus"].startswith(versus_prefix)]


def _seed_spread(std: float, seeds: int) -> str:
    return f", std over {seeds} generator seeds {fmt(std, '.4f')}" if seeds > 1 else ", 1 generator seed: no seed spread"


def _effect(rows: Sequence[Mapping[str, Any]]) -> tuple[float, float, float, int]:
    """(mean diff over seeds, its std over seeds, mean paired SE, sign: +1 significant gain, -1 loss, 0 neither)."""
    diff, std = mean_std([r["diff"] for r in rows])
    se = float(np.mean([r["se"] for r in rows]))
    sign = 1 if diff > SIGNIFICANT_SE * se else -1 if diff < -SIGNIFICANT_SE * se else 0
    return diff, std, se, sign


def finding_pruning(gen: GeneratorResults | None) -> Finding:
    """Finding 4: drop layer 2 vs baseline, and the automatically chosen top-K vs drop layer 2 (paired
    Recall@10 over the same test users). The listed K values are shown but do not decide: picking the
    best of them on the test split would flatter top-K."""
    if gen is None:
        return Finding(4, CLAIMS[4], NOT_MEASURED, "the generator was not trained (no interactions, or --no-generator)")
    metric = gen.comparisons["metric"]
    evidence = ["| SIDs | seed | K | collision rate | mean SID length | L2 Gini | Recall@5 | NDCG@5 | Recall@10 | NDCG@10 | "
                "head R@10 | tail R@10 | train s | epochs |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for v in gen.variants:
        m = v["metrics"]
        evidence.append(f"| {v['variant']} | {v['seed']} | {v['k']} | {fmt(v['collision_rate'], '.4f')} | "
                        f"{fmt(v['mean_sid_length'], '.3f')} | {fmt(v['layer2_gini'])} | "
                        + " | ".join(fmt(m["all"][k], ".4f") for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"))
                        + f" | {fmt(m['head']['recall@10'], '.4f')} | {fmt(m['tail']['recall@10'], '.4f')} | "
                        f"{v['stats']['train_seconds']} | {v['stats']['epochs']} |")
    evidence += ["", f"Paired differences in {metric} (same test users):", "",
                 "| SIDs | versus | seed | difference | SE |", "| --- | --- | ---: | ---: | ---: |"]
    evidence += [f"| {r['variant']} | {r['versus']} | {r['seed']} | {fmt(r['diff'], '+.4f')} | {fmt(r['se'], '.4f')} |"
                 for r in gen.comparisons["versus"]]
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
    reason = (f"drop layer 2 - baseline {metric} {fmt(d_diff, '+.4f')} (SE {fmt(d_se, '.4f')}{_seed_spread(d_std, len(drop))}); "
              f"{auto_name} - drop layer 2 {fmt(a_diff, '+.4f')} (SE {fmt(a_se, '.4f')}{_seed_spread(a_std, len(auto))}){note}")
    listed = [r for r in gen.comparisons["versus"] if r["variant"].startswith("top-") and r["versus"].startswith("drop layer")]
    if listed:
        best = max(listed, key=lambda r: r["diff"])
        reason += (f"; best listed K (chosen on the test split, so not used for the verdict): {best['variant']} - drop layer 2 "
                   f"{fmt(best['diff'], '+.4f')} (SE {fmt(best['se'], '.4f')}, seed {best['seed']})")
    if d_sign > 0 and a_sign > 0:
        return Finding(4, CLAIMS[4], REPRODUCED, reason, evidence)
    if d_sign < 0:  # the claim's first half is contradicted; beating a harmful drop proves nothing for top-K
        return Finding(4, CLAIMS[4], NOT_REPRODUCED, reason + "; dropping layer 2 significantly hurts", evidence)
    if d_sign > 0 or a_sign > 0:
        return Finding(4, CLAIMS[4], PARTLY, reason, evidence)
    return Finding(4, CLAIMS[4], NOT_REPRODUCED, reason + "; no significant difference", evidence)


def findings(results: StudyResults) -> list[Finding]:
    return [finding_concentration(results.tokenizers), finding_uniformity(results.uniformity),
            finding_head_tail(results.generator), finding_pruning(results.generator)]
