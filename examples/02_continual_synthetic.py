"""A tiny continual run on a synthetic stream: train task after task, print R[t, i], BWT, the unified score.

Run:  OMP_NUM_THREADS=1 python examples/02_continual_synthetic.py

Everything is seeded and small (3 tasks, 3 classes each, a 128-wide head, 15 epochs per task), so the run
takes a few seconds on one CPU core. The figures it prints describe this toy stream only, not a benchmark.

The trainer warns when a task's codes collapse (all equal, or more than half of the bits constant over the
task); a few constant bits on toy tasks of three classes are expected and only logged at INFO level.
"""

from __future__ import annotations

import tempfile

import torch

from pbeh import ContinualTrainer, TrainerConfig
from pbeh.data import synthetic_stream
from pbeh.extension import FixedSchedule

torch.set_num_threads(1)  # small matrices: one thread is fastest, and polite on a shared machine

# A seeded multi-label stream with different image and text widths (64-d and 32-d), no download needed.
stream = synthetic_stream(n_tasks=3, classes_per_task=3, items_per_class=60, seed=0)
print(stream.describe(), end="\n\n")

config = TrainerConfig(
    epochs=15,  # the reference trains 100 epochs per task
    batch_size=128,
    lr=1e-3,
    eval_k=None,  # mAP@all: the toy databases are smaller than the reference's k=1000
    select_on="validation",  # best epoch on a split of the training items, never on the queries
    freeze_old_bits=True,  # on extension, the path that produces the old bits is frozen
)

with tempfile.TemporaryDirectory() as checkpoints:
    trainer = ContinualTrainer.for_stream(
        stream,
        n_bits=16,
        hidden_dims=(128,),  # the reference uses (4096, 4096)
        config=config,
        # Widen the code by 8 bits after every task, so the stored database mixes 16-, 24- and 32-bit codes.
        # The default policy is the reference's mode-centre rule, ModeCenterRule(rho=0.1, delta=1).
        extension_policy=FixedSchedule(bits_per_task=8),
        checkpoint_dir=checkpoints,
    )
    reports = trainer.fit(stream)

    print(trainer.matrix.format_table(), end="\n\n")
    for report in reports:
        drift = "-" if report.prefix_drift is None else f"{report.prefix_drift:.3f}"
        print(
            f"{report.name}: {report.n_bits} bits, {report.n_prompts} prompt(s), "
            f"best epoch {report.best_epoch}, unified i2t {report.unified_i2t:.3f} "
            f"(chance {report.unified_chance:.3f}), prefix drift {drift}"
        )
        print(f"    {report.extension['reason']}")
    print()
    print("stored code lengths (n_bits, count):", trainer.text_index.segments)
    summary = trainer.summary()
    print(
        f"final mean mAP i2t {summary['mean_i2t']:.4f} t2i {summary['mean_t2i']:.4f}; "
        f"BWT i2t {summary['bwt_i2t']:+.4f} t2i {summary['bwt_t2i']:+.4f}"
    )

    # Resume: a new trainer on the same checkpoint directory loads latest.json and skips the finished tasks.
    # (with the same options: a checkpoint trained with others is refused)
    resumed = ContinualTrainer.for_stream(
        stream,
        n_bits=16,
        hidden_dims=(128,),
        config=config,
        extension_policy=FixedSchedule(bits_per_task=8),
        checkpoint_dir=checkpoints,
    )
    resumed.fit(stream)
    assert resumed.n_tasks_done == len(stream)
    assert resumed.matrix.final_mean("i2t") == trainer.matrix.final_mean("i2t")
    print(f"resumed from {checkpoints}: {resumed.n_tasks_done} tasks already done, nothing retrained")
