"""Calibration of catalog drift's reconstruction-ratio signal (`drift.max_recon_ratio`).

The signal divides new items' mean reconstruction error under the published tokenizer by the error the
index measured on its own items (which the tokenizer was fitted on). Two cases must fall on opposite
sides of the threshold:
- same catalog: the default tokenizer fitted on all but a seeded share of a real catalog's items; the
  held-out share arrives as "new items" (what a normal night brings: more of the same);
- novel items: as many items of another real catalog arrive instead (what drift is for).

    .venv/bin/python benchmarks/drift_calibration.py --embeddings beauty.parquet scientific.parquet sports.parquet
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import header, log, md_table, new_result, write_result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--embeddings", type=Path, nargs="+", required=True, help="embeddings parquets, one per catalog")
    p.add_argument("--shares", type=float, nargs="+", default=[0.02, 0.05, 0.10], help="shares of new items")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="")
    return p.parse_args(argv)


def measure(name: str, X: np.ndarray, others: dict[str, np.ndarray], share: float, threads: int) -> dict:
    from rqsid.config import QuantizerConfig
    from rqsid.quantize import make_tokenizer

    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    n_new = int(round(share * len(X)))
    new, old = X[order[:n_new]], X[order[n_new:]]
    t0 = time.perf_counter()
    tok = make_tokenizer(QuantizerConfig(threads=threads)).fit(old, progress=False)
    fit_s = time.perf_counter() - t0
    index_error = tok.reconstruction_error(old)
    row = {"catalog": name, "items": len(old), "new": n_new, "share": share, "index_error": index_error,
           "same": tok.reconstruction_error(new) / index_error, "fit_s": fit_s}
    novel = [tok.reconstruction_error(Y[rng.choice(len(Y), min(n_new, len(Y)), replace=False)]) / index_error
             for Y in others.values()]
    row["novel_min"], row["novel_max"] = min(novel), max(novel)
    row["novel_from"] = ", ".join(f"{o} {r:.2f}" for o, r in zip(others, novel, strict=True))
    log(f"{name} share {share}: same {row['same']:.3f}, novel {row['novel_from']} (fit {fit_s:.0f} s)")
    return row


def main(argv=None) -> None:
    from rqsid.config import DriftConfig
    from rqsid.embed import read_embeddings

    args = parse_args(argv)
    catalogs = {p.stem: read_embeddings(p)[1] for p in args.embeddings}
    rows = [measure(name, X, {o: Y for o, Y in catalogs.items() if o != name}, share, args.threads)
            for name, X in catalogs.items() for share in args.shares]
    threshold = DriftConfig().max_recon_ratio
    same_max, novel_min = max(r["same"] for r in rows), min(r["novel_min"] for r in rows)
    result = new_result(rows=rows, threshold=threshold, same_max=same_max, novel_min=novel_min)
    notes = [
        "Default tokenizer (`QuantizerConfig()`), fitted on all but a seeded share of each catalog; ratio = mean "
        "reconstruction error of the arriving items / the index's own (fitted) items'. `same`: the held-out share "
        "of the same catalog arrives; `novel`: as many items of another catalog arrive instead.",
    ]
    lines = header("Catalog drift: the reconstruction-ratio threshold", result, notes)
    lines += md_table(rows, [("catalog", "catalog", ""), ("index items", "items", ","), ("new items", "new", ","),
                             ("share", "share", ".2f"), ("index error", "index_error", ".4f"),
                             ("ratio, same catalog", "same", ".3f"), ("ratio, novel items", "novel_from", ""),
                             ("fit s", "fit_s", ".0f")])
    lines += ["", f"Largest same-catalog ratio {same_max:.3f}; smallest novel-items ratio {novel_min:.3f}; "
              f"the default threshold `drift.max_recon_ratio` = {threshold} "
              + ("separates them." if same_max < threshold < novel_min else "does NOT separate them.")]
    write_result(f"drift_calibration{args.tag}", result, "\n".join(lines))


if __name__ == "__main__":
    main()
