"""The hourglass study: the four findings of Kuai et al. (EMNLP 2024 Industry, "Breaking the Hourglass
Phenomenon of Residual Quantization") as measured, rerunnable experiments on any catalog.

1. Concentration: residual quantization concentrates layer-2 tokens (high Gini, low entropy, large std).
2. Input uniformity: uniform inputs show no hourglass, non-uniform ones do (RQ amplifies the skew in layer 2).
3. Head vs tail: a generator does markedly better on targets with a head layer-2 token than on tail ones.
4. Pruning: dropping layer 2 helps the generator, adaptive top-K removal helps more.

Modules, in the order a study runs: `inputs` (the catalog, its embeddings, reference SIDs, synthetic
inputs), `sweeps` (tokenizer fits over seeds), `variants` (the SID variants and generator runs),
`statistics` (means over seeds, paired differences), `verdicts` (a verdict per finding from the numbers),
`report` (report.md and results.json), `results` (the typed results they pass along). All pure; the
Prefect flow (flows/study.py) runs them as tasks (tasks/study.py), logs to MLflow and writes the report.
"""

from rqsid.lookup import align_embeddings
from rqsid.study.inputs import (
    KNOWN_DATASETS,
    StudyData,
    SyntheticSpec,
    dataset_source,
    isotropic_gaussian,
    load_study_data,
    uniform_sphere,
    zipf_mixture,
    zipf_sizes,
)
from rqsid.study.report import render_report, rerender_report, write_report
from rqsid.study.results import (
    DatasetInfo,
    GeneratorResults,
    StudyResults,
    StudySettings,
    TokenizerResults,
    UniformityResults,
    default_ks,
)
from rqsid.study.statistics import (
    LAYER_KEYS,
    generator_comparisons,
    group_difference,
    hourglass_gap,
    paired_difference,
    profile,
    summarise,
)
from rqsid.study.sweeps import SweepFit, fit_table, layer_rows, layer_values, quantize_sweep
from rqsid.study.variants import (
    GeneratorRun,
    popularity_head_tail,
    prune_variants,
    run_generator,
    table_summary,
    variant_key,
)
from rqsid.study.verdicts import (
    NOT_MEASURED,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    VERDICTS,
    Finding,
    finding_concentration,
    finding_head_tail,
    finding_pruning,
    finding_uniformity,
    findings,
)

__all__ = [
    "KNOWN_DATASETS", "LAYER_KEYS", "NOT_MEASURED", "NOT_REPRODUCED", "PARTLY", "REPRODUCED", "VERDICTS",
    "DatasetInfo", "Finding", "GeneratorResults", "GeneratorRun", "StudyData", "StudyResults", "StudySettings",
    "SweepFit", "SyntheticSpec", "TokenizerResults", "UniformityResults",
    "align_embeddings", "dataset_source", "default_ks", "finding_concentration", "finding_head_tail",
    "finding_pruning", "finding_uniformity", "findings", "fit_table", "generator_comparisons", "group_difference",
    "hourglass_gap", "isotropic_gaussian", "layer_rows", "layer_values", "load_study_data", "paired_difference",
    "popularity_head_tail", "profile", "prune_variants", "quantize_sweep", "render_report", "rerender_report",
    "run_generator", "summarise", "table_summary", "uniform_sphere", "variant_key", "write_report", "zipf_mixture",
    "zipf_sizes",
]
