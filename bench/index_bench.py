"""Index benchmark: TruncatedHammingIndex against a bare faiss IndexBinaryFlat, plus a cross-length quality demo.

Usage: ``python bench/index_bench.py [--quick] [--repeats R]``

Speed (1 thread): 1,000,000 random 64-bit codes, 100 queries, k = 10 and 100 (``--quick``: 200,000 codes).

* single length: the index holding the codes as one 64-bit segment, against ``IndexBinaryFlat`` on the same codes;
* mixed lengths: the index holding a third of the codes at each of 32, 48 and 64 bits (64-bit queries), against
  ``IndexBinaryFlat`` over all the codes at 64 bits, as BENCHMARKS.md asks;
* truncated query (informative): 48-bit queries against the 1M 64-bit segment, which compares on a cached,
  truncated copy.

Each timing is the median of R runs, the two sides interleaved; the ratio is index speed / faiss speed (= faiss time /
index time), measured in the same run, because absolute times vary on the shared machines. Targets: single length
>= 0.95, mixed >= 0.9. The single-length results must equal faiss's (same ids, same distances; checked).

Quality (the clustered-codes demo of BENCHMARKS.md): 64-bit cluster centres, items that flip each bit of their centre
with probability 0.22, stored at 32, 48 and 64 bits (a third each); 64-bit queries; relevant = same cluster. P@100 per
score policy, and the same items all stored at 64 bits as the upper reference.

Exit status 1 if a correctness check fails (never because of a time).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from pbeh import _faiss  # noqa: E402
from pbeh.codes import Codes  # noqa: E402
from pbeh.index import SCORE_POLICIES, TruncatedHammingIndex  # noqa: E402


def interleaved_medians(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time of ``a`` and ``b`` over ``repeats`` runs each, alternating which one goes first."""
    a(), b()  # warm-up (page faults, cached truncated copies)
    ta, tb = [], []
    for r in range(repeats):
        for fn, out in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def speed(n_codes: int, n_queries: int, repeats: int) -> bool:
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, (n_codes, 8), dtype=np.uint8)
    queries = Codes.from_packed(rng.integers(0, 256, (n_queries, 8), dtype=np.uint8), 64)
    flat = _faiss.flat_index(packed)

    single = TruncatedHammingIndex(score="zscore", threads=1)
    single.add(Codes.from_packed(packed, 64))
    third = n_codes // 3
    mixed = TruncatedHammingIndex(score="zscore", threads=1)
    all_codes = Codes.from_packed(packed, 64)
    mixed.add(all_codes[:third].truncate(32))
    mixed.add(all_codes[third : 2 * third].truncate(48))
    mixed.add(all_codes[2 * third :])
    short_queries = queries.truncate(48)

    ok = True
    print(
        f"\nSpeed: {n_codes:,} codes, {n_queries} queries, 1 thread, median of {repeats} (ratio = index / faiss speed)"
    )
    print(f"{'case':<34}{'k':>5}{'faiss ms':>11}{'index ms':>11}{'ratio':>8}{'index G cmp/s':>15}")
    for k in (10, 100):
        with _faiss.omp_threads(1):
            d_ref, i_ref = flat.search(queries.packed, k)
        res = single.search(queries, k)
        same = np.array_equal(res.ids, i_ref) and np.array_equal(res.distances, d_ref)
        ok &= same
        cases = [
            ("single length 64 bits", lambda k=k: single.search(queries, k)),
            ("mixed 32/48/64 (flat: all at 64)", lambda k=k: mixed.search(queries, k)),
            ("48-bit queries on 64-bit codes", lambda k=k: single.search(short_queries, k)),
        ]
        for name, fn in cases:

            def bare(k=k):
                with _faiss.omp_threads(1):
                    flat.search(queries.packed, k)

            t_faiss, t_index = interleaved_medians(bare, fn, repeats)
            rate = n_codes * n_queries / t_index / 1e9
            print(f"{name:<34}{k:>5}{t_faiss * 1e3:>11.1f}{t_index * 1e3:>11.1f}{t_faiss / t_index:>8.3f}{rate:>15.2f}")
        print(f"{'  single-length results == faiss':<34}{k:>5}{'yes' if same else 'NO (check failed)':>26}")
    return ok


def precision_at(result_ids: np.ndarray, db_cluster: np.ndarray, q_cluster: np.ndarray, k: int) -> float:
    return float((db_cluster[result_ids[:, :k]] == q_cluster[:, None]).mean())


def quality(n_clusters: int, per_cluster: int, n_queries: int, noise: float = 0.22) -> None:
    rng = np.random.default_rng(1)
    centres = rng.random((n_clusters, 64)) < 0.5

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        cluster = rng.integers(0, n_clusters, n)
        return centres[cluster] ^ (rng.random((n, 64)) < noise), cluster

    db_bits, db_cluster = sample(n_clusters * per_cluster)
    q_bits, q_cluster = sample(n_queries)
    queries = Codes.from_bool(q_bits)
    lengths = np.array([32, 48, 64])[rng.integers(0, 3, len(db_bits))]

    def build(n_bits_list: tuple[int, ...], **options: float) -> TruncatedHammingIndex:
        index = TruncatedHammingIndex(**options)
        for n_bits in n_bits_list:
            rows = np.flatnonzero(lengths == n_bits) if len(n_bits_list) > 1 else np.arange(len(db_bits))
            index.add(Codes.from_bool(db_bits[rows, :n_bits]), ids=rows)
        return index

    mixed = build((32, 48, 64))
    k = 100
    print(
        f"\nQuality: {n_clusters} clusters x {per_cluster} items (bit noise {noise}) stored at 32/48/64 bits, "
        f"{n_queries} 64-bit queries; chance P@{k} = {1 / n_clusters:.3f}; related pairs differ on a fraction "
        f"{2 * noise * (1 - noise):.2f} of their bits (the llr's ideal p)"
    )
    print(f"{'policy':<24}{'P@100':>8}{'share of top 100 at 32 / 48 / 64 bits':>42}")
    rows: list[tuple[str, TruncatedHammingIndex, str]] = [(s, mixed, s) for s in SCORE_POLICIES]
    rows[-1] = (f"llr (p={mixed.flip_probability}, default)", mixed, "llr")
    rows += [(f"llr (p={p})", build((32, 48, 64), flip_probability=p), "llr") for p in (0.05, 0.1, 0.3, 0.4)]
    for name, index, score in rows:
        res = index.search(queries, k, score=score)
        share = " / ".join(f"{float((lengths[res.ids] == n).mean()):.2f}" for n in (32, 48, 64))
        print(f"{name:<24}{precision_at(res.ids, db_cluster, q_cluster, k):>8.3f}{share:>42}")
    res = build((64,)).search(queries, k, score="hamming")
    print(f"{'all stored at 64 bits':<24}{precision_at(res.ids, db_cluster, q_cluster, k):>8.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200,000 codes and a smaller quality demo")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 11, quick 3)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 11)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min), cpus: {os.cpu_count()}")
    ok = speed(200_000 if args.quick else 1_000_000, 100, repeats)
    quality(50, 200 if args.quick else 600, 200)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f} (1 min)")
    if not ok:
        print("FAILED: the index's single-length results differ from faiss's", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
