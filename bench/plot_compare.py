"""Figures from bench/compare.py's JSON: per dataset, the unified score against bits per method, and the R[t, i]
matrices as heatmaps. Needs the plotting extra (``pip install "pbeh[plot]"``).

    python bench/plot_compare.py compare.json --out docs/figures --bits 32
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit('bench/plot_compare.py needs matplotlib: pip install "pbeh[plot]"') from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean(values: list[Any]) -> float:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def plot_unified(rows: list[dict], dataset: str, out: Path) -> Path:
    plt = _pyplot()
    by_method: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_method[r["method"]][int(r["bits"])].append(r)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, direction, title in ((axes[0], "i2t", "image → text"), (axes[1], "t2i", "text → image")):
        for method, cells in by_method.items():
            bits = sorted(cells)
            ax.plot(bits, [_mean([r.get(f"unified_{direction}") for r in cells[b]]) for b in bits], marker="o",
                    label=method)  # fmt: skip
        chance = _mean([r.get("unified_chance") for r in rows])
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({int(r["bits"]) for r in rows}))
        ax.set_xticklabels([str(b) for b in sorted({int(r["bits"]) for r in rows})])
        ax.set_xlabel("bits")
        ax.set_title(f"{dataset}: unified mAP, {title}")
    axes[0].set_ylabel("unified mAP (all seen queries, one ranking)")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out / f"{dataset}_unified.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_matrices(rows: list[dict], dataset: str, bits: int, out: Path) -> Path | None:
    plt = _pyplot()
    chosen = [r for r in rows if int(r["bits"]) == bits and r.get("R_i2t")]
    methods = []
    for r in chosen:  # first seed of each method
        if r["method"] not in [m["method"] for m in methods]:
            methods.append(r)
    if not methods:
        return None
    fig, axes = plt.subplots(2, len(methods), figsize=(2.3 * len(methods), 4.6), squeeze=False)
    for col, r in enumerate(methods):
        for row, direction in enumerate(("i2t", "t2i")):
            matrix = np.array([[np.nan if v is None else v for v in line] for line in r[f"R_{direction}"]])
            ax = axes[row][col]
            ax.imshow(matrix, vmin=0.4, vmax=1.0, cmap="viridis")
            n = matrix.shape[0]
            for t in range(n):
                for i in range(n):
                    if np.isfinite(matrix[t, i]):
                        ax.text(i, t, f"{matrix[t, i]:.2f}", ha="center", va="center", fontsize=5, color="white")
            ax.set_xticks(range(n))
            ax.set_yticks(range(n))
            ax.tick_params(labelsize=6)
            if row == 0:
                ax.set_title(r["method"], fontsize=7)
            if col == 0:
                ax.set_ylabel(f"{direction.replace('2', '→').upper()}\nafter task t", fontsize=7)
    fig.suptitle(f"{dataset}, {bits} bits: R[t, i] (query set i against database i after task t)", fontsize=9)
    fig.tight_layout()
    path = out / f"{dataset}_R_{bits}bits.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="the --json file written by bench/compare.py")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--bits", type=int, default=32, help="code length of the heatmaps")
    args = parser.parse_args()
    rows = json.loads(args.json.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    for dataset in sorted({r["dataset"] for r in rows}):
        subset = [r for r in rows if r["dataset"] == dataset]
        print(plot_unified(subset, dataset, args.out))
        path = plot_matrices(subset, dataset, args.bits, args.out)
        if path:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
