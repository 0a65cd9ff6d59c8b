"""Long fuzz run over every pbeh reader: the share of damaged inputs that escape pbeh's documented exceptions.

Uses the targets, seed artifacts and mutations of ``tests/test_fuzz.py`` (see its docstring), drawn here from a
seeded numpy generator, and runs them in worker processes so that a crash (a signal such as SIGSEGV) is counted
instead of ending the run: the input a worker died on is recorded as a crash and a new worker continues after it.
Workers run under an address-space limit, so an input that makes a reader allocate without bound shows up as a
MemoryError ("other") instead of exhausting the machine.

Outcomes per input: ``ok`` (loaded the same content, or a structurally valid change), ``format_error`` (the
documented error), ``silent_change`` (a binary file whose bytes were damaged loaded other content without an
error), ``other`` (any other exception) and ``crash``. The figure of merit is the share outside the documented
behaviour: ``(other + silent_change + crash) / inputs``.

Run (about 15-25 minutes for 50,000 inputs on one core):

    OMP_NUM_THREADS=1 python bench/fuzz.py --inputs 50000 --workers 1 --out fuzz_results.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_fuzz  # noqa: E402  (the shared targets and mutations)

MEMORY_LIMIT = 8 << 30


def draw(seed: int, i: int) -> tuple[str, list[tuple[int, int, int]]]:
    """Input ``i`` of the run: a target (uniform over the targets) and 1-3 mutations."""
    rng = np.random.default_rng([seed, i])
    names = sorted(test_fuzz.TARGETS)
    target = names[int(rng.integers(len(names)))]
    n_ops = int(rng.integers(1, 4))
    ops = [
        (int(rng.integers(test_fuzz.N_KINDS)), int(rng.integers(2**32)), int(rng.integers(2**32))) for _ in range(n_ops)
    ]
    return target, ops


def worker(seeds: Path, start: int, stop: int, seed: int) -> None:
    """Run inputs ``start..stop-1``, one JSON line each on stdout (flushed, so the parent sees how far it got)."""
    import resource

    import torch

    torch.set_num_threads(1)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    ws = test_fuzz.Workspace(seeds)
    try:
        for i in range(start, stop):
            target, ops = draw(seed, i)
            try:
                outcome, detail = ws.run(target, ops)
            except MemoryError as exc:  # raised while classifying (should not happen)
                outcome, detail = "other", f"MemoryError: {exc}"
            print(json.dumps({"i": i, "target": target, "outcome": outcome, "detail": detail}), flush=True)
    finally:
        ws.close()


def run_range(seeds: Path, start: int, stop: int, seed: int, results: list[dict]) -> None:
    """Run ``start..stop-1`` in worker processes, restarting after a crash."""
    position = start
    while position < stop:
        cmd = [sys.executable, __file__, "--worker", str(seeds), str(position), str(stop), str(seed)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            results.append(record)
            position = record["i"] + 1
        code = proc.wait()
        if position < stop:  # the worker died on input `position`
            target, ops = draw(seed, position)
            results.append(
                {"i": position, "target": target, "outcome": "crash", "detail": f"exit code {code}", "ops": ops}
            )
            position += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the counts and examples as JSON")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        seeds, start, stop, seed = args.worker
        worker(Path(seeds), int(start), int(stop), int(seed))
        return 0

    started = time.perf_counter()
    seeds = test_fuzz.build_seeds(Path(tempfile.mkdtemp(prefix="pbeh-fuzz-seeds-")))
    bounds = np.linspace(0, args.inputs, args.workers + 1).astype(int)
    from concurrent.futures import ThreadPoolExecutor

    parts: list[list[dict]] = [[] for _ in range(args.workers)]
    with ThreadPoolExecutor(args.workers) as pool:
        for w in range(args.workers):
            pool.submit(run_range, seeds, int(bounds[w]), int(bounds[w + 1]), args.seed, parts[w])
    results = [r for part in parts for r in part]
    elapsed = time.perf_counter() - started

    counts = collections.Counter(r["outcome"] for r in results)
    per_target: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        per_target[r["target"]][r["outcome"]] += 1
    bad = [r for r in results if r["outcome"] in ("other", "silent_change", "crash")]
    kinds = collections.Counter(r["detail"].split(":")[0] for r in bad)
    outside = len(bad) / max(len(results), 1)
    print(f"{len(results)} inputs in {elapsed:.0f} s (seed {args.seed}, {args.workers} worker(s))")
    print(f"{'target':<20}" + "".join(f"{o:>15}" for o in ("ok", "format_error", "other", "silent_change", "crash")))
    for name in sorted(per_target):
        c = per_target[name]
        print(f"{name:<20}" + "".join(f"{c[o]:>15}" for o in ("ok", "format_error", "other", "silent_change", "crash")))
    print(f"outside the documented behaviour: {len(bad)} of {len(results)} = {100 * outside:.3f} %")
    for kind, n in kinds.most_common(10):
        example = next(r for r in bad if r["detail"].split(":")[0] == kind)
        print(f"  {n:6d} x {example['target']}: {example['detail'][:160]}")
    if args.out:
        summary = {
            "inputs": len(results),
            "seconds": elapsed,
            "seed": args.seed,
            "counts": dict(counts),
            "per_target": {k: dict(v) for k, v in per_target.items()},
            "outside_share": outside,
            "examples": bad[:200],
        }
        args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
