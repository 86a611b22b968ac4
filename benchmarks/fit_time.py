"""Fit one tokenizer on saved embeddings and print fit/encode time, reconstruction and the per-layer report.

usage: python benchmarks/fit_time.py EMBEDDINGS.parquet [rqvae|rkmeans] [section-free quantizer overrides: field=value ...]
e.g.   python benchmarks/fit_time.py beauty-embeddings.parquet rqvae threads=1
(embeddings from `rqsid embed --catalog CATALOG --out EMBEDDINGS.parquet`)."""

from __future__ import annotations

import json
import os
import sys
import time

from rqsid.config import QuantizerConfig
from rqsid.embed import read_embeddings
from rqsid.metrics import distribution_report
from rqsid.quantize import make_tokenizer
from rqsid.sids import collision_rate


def main(argv: list[str]) -> dict:
    path, method, *pairs = argv if len(argv) > 1 else [*argv, "rqvae"]
    overrides = {k: json.loads(v) for k, v in (p.split("=", 1) for p in pairs)}
    ids, X = read_embeddings(path)
    config = QuantizerConfig(method=method, **overrides)
    cpu, start = time.process_time(), time.perf_counter()
    tokenizer = make_tokenizer(config).fit(X, progress=False)
    fit_s, fit_cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    codes = tokenizer.encode(X)
    encode_s = time.perf_counter() - start
    total_variance = float(((X - X.mean(0)) ** 2).sum(1).mean())
    report = distribution_report(codes, tokenizer.codebook_sizes)
    return {
        "embeddings": path, "items": len(ids), "method": method, "overrides": overrides,
        "fit_s": round(fit_s, 1), "fit_cpu_s": round(fit_cpu, 1), "encode_s": round(encode_s, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "recon_share_unexplained": round(tokenizer.reconstruction_error(X) / total_variance, 4),
        "gini": [round(layer["gini"], 3) for layer in report["layers"]],
        "utilisation": [round(layer["utilisation"], 3) for layer in report["layers"]],
        "collision_rate": round(float(collision_rate(codes)), 4),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
