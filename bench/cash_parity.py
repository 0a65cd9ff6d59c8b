"""CASH parity: pbeh's CASH on the inputs and settings the released code was run with, beside BENCHMARKS.md's anchors.

    OMP_NUM_THREADS=1 python bench/cash_parity.py --data-dir ../shared/data --out docs/cash_parity.md

Inputs: :func:`pbeh.models._peer_protocol.reference_inputs` (PCA per modality on all training items, sign-fixed,
rows scaled to norm sqrt(512), zero-padded to 512). MIRFLICKR730-4 uses the anchors' query split (one
``np.random.RandomState(0)`` across tasks in task order; per task ``perm = rs.permutation(n_t)``, queries = sorted
``idx[perm[:round(0.2 n_t)]]``). Model and protocol: the released defaults (heads 512-4096-K, 10 prompts, batch 64,
lr 1e-5 then 1e-6, ExponentialLR 0.99, selection on the task's queries every epoch, seed 88), mAP@1000 with the
reference's tie rule. Per-task rows use the oracle task id (as released); "all" = every seen query, task inferred,
against the stored databases concatenated in task order (as released).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from pbeh.codes import Codes
from pbeh.data import MIRFLICKR730_4_GROUPS, read_features_npz, wikipedia5
from pbeh.metrics import map_at_k
from pbeh.models._peer_protocol import reference_inputs
from pbeh.models.cash import CASHConfig, CASHTrainer

# BENCHMARKS.md, "Anchors": the released CASH code on these splits (final row per task, mean, all).
ANCHORS = {
    ("mirflickr730-4", 16): ([0.563, 0.573, 0.588, 0.474], 0.549, [0.561, 0.579, 0.583, 0.479], 0.550, 0.493, 0.504),
    ("mirflickr730-4", 32): ([0.625, 0.561, 0.576, 0.509], 0.568, [0.619, 0.598, 0.598, 0.565], 0.595, 0.487, 0.514),
    ("mirflickr730-4", 64): ([0.664, 0.573, 0.580, 0.490], 0.577, [0.679, 0.569, 0.597, 0.508], 0.588, 0.485, 0.498),
    ("wikipedia5", 16): (
        [0.652, 0.562, 0.573, 0.704, 0.624],
        0.623,
        [0.719, 0.549, 0.549, 0.639, 0.503],
        0.592,
        0.145,
        0.188,
    ),
    ("wikipedia5", 32): (
        [0.618, 0.537, 0.560, 0.685, 0.594],
        0.599,
        [0.699, 0.506, 0.500, 0.584, 0.521],
        0.562,
        0.151,
        0.159,
    ),
}
ANCHOR_EPOCHS = {"wikipedia5": 50, "mirflickr730-4": 100}


def mirflickr_anchor_stream(data_dir: Path):
    """MIRFLICKR730-4 with the anchors' query split."""
    data = read_features_npz(data_dir / "mirflickr730" / "features.npz")
    groups = [list(g) for g in MIRFLICKR730_4_GROUPS]
    membership = data.split(groups=groups, query_size=0, database="train", name="mirflickr730-4")
    rows_of = {int(i): r for r, i in enumerate(data.ids)}
    mask = np.zeros(len(data.ids), dtype=bool)
    rs = np.random.RandomState(0)
    for task in membership:
        idx = np.sort([rows_of[int(i)] for i in task.train.ids])
        perm = rs.permutation(len(idx))
        mask[np.sort(idx[perm[: round(0.2 * len(idx))]])] = True
    return data.split(groups=groups, query_mask=mask, database="train", name="mirflickr730-4")


def run(name: str, stream, n_bits: int, epochs: int, seed: int) -> dict:
    config = CASHConfig.reference(epochs=epochs, eval_k=1000, seed=seed)
    trainer = CASHTrainer.for_stream(stream, n_bits=n_bits, config=config, input_transform="identity")
    started = time.perf_counter()
    trainer.fit(stream)
    seconds = time.perf_counter() - started
    matrix = trainer.matrices["oracle"]
    last = len(stream) - 1
    row_i2t = matrix.matrix("i2t")[last, : last + 1].tolist()
    row_t2i = matrix.matrix("t2i")[last, : last + 1].tolist()
    # "all" as released: inferred-task queries against the stored databases concatenated in task order
    q_img, q_txt = zip(*trainer.encode_queries("inferred"), strict=True)
    q_labels = np.concatenate([t.query.labels for t in stream])
    db_labels = np.concatenate([s.labels for s in trainer.stored])
    db_img = Codes.concatenate([s.image for s in trainer.stored])
    db_txt = Codes.concatenate([s.text for s in trainer.stored])
    all_i2t = float(map_at_k(Codes.concatenate(q_img), db_txt, q_labels, db_labels, k=1000, ties="reference"))
    all_t2i = float(map_at_k(Codes.concatenate(q_txt), db_img, q_labels, db_labels, k=1000, ties="reference"))
    return {
        "dataset": name,
        "bits": n_bits,
        "epochs": epochs,
        "seed": seed,
        "row_i2t": row_i2t,
        "row_t2i": row_t2i,
        "mean_i2t": float(np.mean(row_i2t)),
        "mean_t2i": float(np.mean(row_t2i)),
        "all_i2t": all_i2t,
        "all_t2i": all_t2i,
        "best_epochs": [r["best_epoch"] for r in trainer.history],
        "task_accuracy": trainer.task_accuracy(),
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["wikipedia5:16", "wikipedia5:32", "mirflickr730-4:16"],
        help="dataset:bits pairs (anchors exist for wikipedia5:16/32, mirflickr730-4:16/32/64)",
    )
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="fraction of the anchors' epochs to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[88])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    streams = {}
    results = []
    for spec in args.runs:
        name, bits = spec.split(":")
        bits = int(bits)
        if name not in streams:
            raw = wikipedia5(args.data_dir) if name == "wikipedia5" else mirflickr_anchor_stream(args.data_dir)
            streams[name] = reference_inputs(raw, dim=512)
        epochs = max(1, round(ANCHOR_EPOCHS[name] * args.epochs_scale))
        for seed in args.seeds:
            result = run(name, streams[name], bits, epochs, seed)
            results.append(result)
            anchor = ANCHORS.get((name, bits))
            fmt = lambda xs: " ".join(f"{x:.3f}" for x in xs)  # noqa: E731
            print(
                f"{name} {bits} bits, {epochs} epochs, seed {seed}: I->T {fmt(result['row_i2t'])} "
                f"mean {result['mean_i2t']:.3f} | T->I {fmt(result['row_t2i'])} mean {result['mean_t2i']:.3f} | "
                f"all {result['all_i2t']:.3f}/{result['all_t2i']:.3f} | best epochs {result['best_epochs']} | "
                f"{result['seconds']:.0f} s",
                flush=True,
            )
            if anchor:
                print(
                    f"  released: I->T {fmt(anchor[0])} mean {anchor[1]:.3f} | T->I {fmt(anchor[2])} "
                    f"mean {anchor[3]:.3f} | all {anchor[4]:.3f}/{anchor[5]:.3f}",
                    flush=True,
                )
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
