"""Training throughput (pairs per second) at 1 and 2 processes under torch.distributed, as a ratio.

Usage::

    python bench/ddp_bench.py [--pairs 204800] [--steps 4] [--warmup 1] [--hidden 4096 4096] [--batch-size 512]
                              [--bits 32] [--dim 512] [--out bench/results/ddp_bench.json]

One seeded synthetic task of ``--pairs`` image-text pairs (10 classes, multi-label, ``--dim``-d features like CLIP
ViT-B/32's) is trained with the reference recipe (``TrainerConfig.reference``: batch 512, random prompts, η = 400) and
the reference head widths (4096, 4096). The anchor is one process (1 thread) running the trainer's single-process
step; then ``torchrun --standalone --nproc_per_node 2`` runs the same global batches (each rank 1 thread, its half of
every batch, the loss over the gathered global batch, DDP's gradient all-reduce) through the trainer's distributed
step. Each run times ``--steps`` optimiser steps after ``--warmup`` untimed ones (a step budget: one epoch of 200k
pairs at these widths takes many minutes on a CPU) and reports the median step; both runs are in this one
invocation, so the ratio is what to compare across machines.

On shared, oversubscribed cores the wall-clock ratio measures the scheduler as much as pbeh (two processes get a
larger share of busy cores than one), so each step's CPU time is measured too (``time.process_time``, all threads of
the process): pairs per CPU second at 2 processes over 1 process is the distributed step's efficiency (1.0: no
overhead), and the CPU each rank spends beyond half of one process's step is the overhead from which the speed-up on
dedicated cores is projected for N processes. The 2-process run also times one all-reduce of a buffer as large as the
trainable parameters (DDP's gradient traffic per step). See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_stream(n_pairs: int, dim: int, seed: int = 0) -> Any:
    """One task of ``n_pairs`` seeded multi-label pairs (class means plus noise); tiny query and database splits."""
    from pbeh.data import Split, Task, TaskStream

    rng = np.random.default_rng(seed)
    n_classes = 10
    main = rng.integers(0, n_classes, n_pairs)
    labels = np.zeros((n_pairs, n_classes), dtype=np.float32)
    labels[np.arange(n_pairs), main] = 1
    extra = rng.random(n_pairs) < 0.3
    labels[np.flatnonzero(extra), rng.integers(0, n_classes, int(extra.sum()))] = 1
    image_means = rng.standard_normal((n_classes, dim)).astype(np.float32)
    text_means = rng.standard_normal((n_classes, dim)).astype(np.float32)
    image = labels @ image_means + rng.standard_normal((n_pairs, dim), dtype=np.float32)
    text = labels @ text_means + rng.standard_normal((n_pairs, dim), dtype=np.float32)
    ids = np.arange(n_pairs, dtype=np.int64)
    train = Split(image, text, labels, ids)
    small = Split(image[:64], text[:64], labels[:64], ids[:64] + n_pairs)
    return TaskStream(
        [Task("synthetic", train, small, Split(image[64:192], text[64:192], labels[64:192], ids[64:192] + 2 * n_pairs))]
    )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Median optimiser-step time of this process (one of a process group when torchrun launched it)."""
    import torch

    from pbeh.trainer import ContinualTrainer, TrainerConfig, _tensor
    from pbeh.training import DistributedMinibatchSampler, barrier, init_from_env, wrap_for_training

    torch.set_num_threads(1)
    ctx = init_from_env(backend="gloo", timeout_s=3600)
    stream = make_stream(args.pairs, args.dim)
    train = stream[0].train
    config = TrainerConfig.reference(batch_size=args.batch_size)
    trainer = ContinualTrainer.for_stream(stream, n_bits=args.bits, hidden_dims=tuple(args.hidden), config=config)
    model = trainer.model
    model.add_task(
        config.prompts_per_task,
        n_train=len(train),
        samples_per_prompt=config.samples_per_prompt,
        init=config.prompt_init,
        image_features=_tensor(train.image[:4096], trainer.device),
        text_features=_tensor(train.text[:4096], trainer.device),
    )
    image, text, labels = (_tensor(x, trainer.device) for x in (train.image, train.text, train.labels))
    del stream, train
    optimizer = trainer._optimizer(0)
    rank, world = (0, 1) if ctx is None else (ctx.rank, ctx.world_size)
    sampler = DistributedMinibatchSampler(len(image), args.batch_size, rank=rank, world_size=world)
    shares = sampler.epoch(torch.Generator().manual_seed(0))
    step_module = wrap_for_training(model, ctx) if ctx is not None else None
    model.train()
    times, cpu_times = [], []
    for step in range(args.warmup + args.steps):
        share = next(shares)
        barrier(ctx)
        started, cpu_started = time.perf_counter(), time.process_time()
        if ctx is None:
            idx = share.indices
            loss, _ = trainer._loss(image[idx], text[idx], labels[idx], 0, [], [])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            trainer._distributed_step(step_module, optimizer, ctx, share, (image, text, labels), None, [], [])
        cpu = time.process_time() - cpu_started  # this process's CPU time (all its threads), before the barrier
        barrier(ctx)
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
            cpu_times.append(cpu)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    from pbeh.training import all_gather_objects

    cpu_per_rank = [statistics.median(c) for c in all_gather_objects(cpu_times, ctx)]
    out: dict[str, Any] = {
        "processes": world,
        "step_seconds": statistics.median(times),
        "step_seconds_all": times,
        "pairs_per_second": args.batch_size / statistics.median(times),
        "cpu_seconds_per_step_per_rank": cpu_per_rank,
        "pairs_per_cpu_second": args.batch_size / sum(cpu_per_rank),
        "trainable_parameters": n_params,
        "n_prompts": model.pool_sizes[0],
    }
    if ctx is not None:
        buffer = torch.zeros(n_params)
        reduce_times = []
        for _ in range(3):
            barrier(ctx)
            started = time.perf_counter()
            torch.distributed.all_reduce(buffer)
            reduce_times.append(time.perf_counter() - started)
        out["allreduce_seconds"] = statistics.median(reduce_times)
        torch.distributed.destroy_process_group()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=204_800)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--hidden", type=int, nargs="+", default=[4096, 4096])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ddp_bench.json")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs < 200_000 and args.worker is None:
        print(f"note: --pairs {args.pairs} is below the 200k pairs the benchmark is specified for")
    if args.worker is not None:  # one rank of the 2-process run
        result = measure(args)
        if result["processes"] == 1 or int(os.environ.get("RANK", "0")) == 0:
            args.worker.write_text(json.dumps(result))
        return

    one = measure(args)
    print(f"1 process : {one['pairs_per_second']:.1f} pairs/s (median step {one['step_seconds']:.2f} s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "rank0.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
            "--worker", str(result_file), "--pairs", str(args.pairs), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--hidden", *map(str, args.hidden), "--batch-size", str(args.batch_size),
            "--bits", str(args.bits), "--dim", str(args.dim),
        ]  # fmt: skip
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        two = json.loads(result_file.read_text())
    ratio = two["pairs_per_second"] / one["pairs_per_second"]
    cpu_ratio = two["pairs_per_cpu_second"] / one["pairs_per_cpu_second"]
    # On cores of its own, a rank's step takes about its CPU time: half the one-process work plus what being one of
    # two adds (gathering, the gradient all-reduce, DDP's bookkeeping, the loss over the gathered batch).
    compute_1 = one["cpu_seconds_per_step_per_rank"][0]
    overhead = max(two["cpu_seconds_per_step_per_rank"]) - compute_1 / 2
    projection = {str(n): compute_1 / (compute_1 / n + max(overhead, 0.0)) for n in (2, 4, 8)}
    print(f"2 processes: {two['pairs_per_second']:.1f} pairs/s (median step {two['step_seconds']:.2f} s)")
    print(f"ratio 2 processes / 1 process (wall clock): {ratio:.2f}x")
    print(f"pairs per CPU second, 2 processes / 1 process: {cpu_ratio:.2f} (1.0: no distributed overhead)")
    print(
        f"gradient all-reduce of {two['trainable_parameters']:,} floats: {two['allreduce_seconds']:.3f} s; "
        f"CPU overhead per rank at 2 processes: {overhead:.2f} s per step of {compute_1:.2f} s; projected speed-up "
        + ", ".join(f"{n}: {v:.2f}x" for n, v in projection.items())
    )
    record = {
        "benchmark": "ddp_bench",
        "command": " ".join(["python", "bench/ddp_bench.py", *sys.argv[1:]]),
        "pairs": args.pairs,
        "batch_size": args.batch_size,
        "hidden": args.hidden,
        "bits": args.bits,
        "dim": args.dim,
        "steps": args.steps,
        "warmup": args.warmup,
        "one_process": one,
        "two_processes": two,
        "ratio_two_over_one": ratio,
        "cpu_efficiency_two_over_one": cpu_ratio,
        "cpu_overhead_seconds_per_rank_step_at_2": overhead,
        "projected_speedup_on_dedicated_cores": projection,
        "load_average_at_end": os.getloadavg()[0],
        "machine": f"{os.cpu_count()} cores (shared), 1 thread per process, gloo",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
