"""Index at scale (issue 10): search, adds, save/load and IVF against bare faiss, and Milvus Lite, in one process.

Usage::

    python bench/index_scale_bench.py --sizes 1000000 4000000 [--parts checksum search add files ivf milvus]
        [--repeats R]

Every figure is a ratio against an anchor measured in the same run (absolute times vary on the shared machines):

* ``search``: 1 and 100 random 64-bit queries, k = 10, 1 thread. The index with one 64-bit segment, and with a
  third of the codes at each of 32, 48 and 64 bits, against ``IndexBinaryFlat`` over all codes at 64 bits; ratio =
  faiss time / index time (>= 0.95 wanted). Single-length results must equal faiss's (checked).
* ``add``: all codes added in batches of 100,000 (automatic ids) against ``IndexBinaryFlat.add`` in the same batches;
  ratio = faiss time / index time (>= 0.5 wanted); the index's time per code at each size shows linearity.
* ``files``: ``save`` / ``load`` against ``faiss.write_index_binary`` + ``np.save(ids)`` and
  ``faiss.read_index_binary`` + ``np.load(ids)``; ratio = faiss time / index time (>= 0.5 wanted). pbeh's files carry
  a checksum (faiss checks nothing): the default, xxh3_128 when xxhash is installed (``pbeh[fast-checksum]``), and
  SHA-256 (``checksum="sha256"``, the dependency-free fallback) are both timed, and load also with ``verify=False``.
  ``--repeats`` interleaved runs each: ratios of the medians, of the fastest runs and of the median CPU times (the
  last two are disturbed less on a shared machine; the fsync wait of a save is not CPU time); the time of each
  checksum alone over the file's bytes and faiss's read throughput show how much of the gap the checksum is. Peak
  extra memory of save and load (tracemalloc, which sees numpy's allocations) over the bytes of the index's arrays
  (<= 1.2 wanted).
* ``checksum``: a micro-benchmark of the candidate checksums on 256 MiB in memory (GB/s): SHA-256, zlib.crc32,
  xxh3_128, and per-block digests (1 MiB blocks) hashed by a pool of 1 and 2 threads, plus a file read from the
  page cache in 1 MiB blocks with and without hashing each block.
* ``ivf``: clustered codes (random 64-bit centres, one per 1,000 codes; each bit flipped with p = 0.1); queries drawn
  the same way; recall@10 against the exact flat index, tie-aware (a returned item counts when its distance is at most
  the exact 10th distance) and by ids; speed-up = flat time / IVF time for 100 queries, per ``nprobe``.
* ``milvus``: Milvus Lite (a temporary file) holding 100,000 codes at 32/48/64 bits; results compared with the flat
  index (must be equal), insert and search throughput as ratios against the in-process index.

Exit status 1 if a correctness check fails (never because of a time).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import zlib  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from pbeh import _faiss  # noqa: E402
from pbeh.codes import Codes  # noqa: E402
from pbeh.index import IVFBackend, TruncatedHammingIndex  # noqa: E402
from pbeh.serialization import _new_digest, checksum_available, resolve_checksum  # noqa: E402

BATCH = 100_000


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_runs(
    a: Callable[[], object], b: Callable[[], object], repeats: int
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Wall times of ``a`` and ``b``, then their CPU times (``time.process_time``, which a loaded machine disturbs
    less), over ``repeats`` alternating runs each (after one warm-up each)."""
    a(), b()
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for r in range(repeats):
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            c0, t0 = time.process_time(), time.perf_counter()
            (a, b)[side]()
            wall[side].append(time.perf_counter() - t0)
            cpu[side].append(time.process_time() - c0)
    return wall[0], wall[1], cpu[0], cpu[1]


def interleaved(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall times of ``a`` and ``b`` over ``repeats`` alternating runs (after one warm-up each)."""
    ta, tb, _, _ = interleaved_runs(a, b, repeats)
    return statistics.median(ta), statistics.median(tb)


def faiss_module():  # the bench may touch faiss directly: it is the anchor
    return _faiss._faiss()


def arrays_bytes(index: TruncatedHammingIndex) -> int:
    return sum(len(seg) * (seg.code_size + 8) for seg in index._segments.values())


def search_part(n: int, repeats: int) -> bool:
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    flat = _faiss.flat_index(packed)
    codes = Codes.from_packed(packed, 64)
    single = TruncatedHammingIndex()
    single.add(codes)
    mixed = TruncatedHammingIndex()
    third = n // 3
    mixed.add(codes[:third].truncate(32))
    mixed.add(codes[third : 2 * third].truncate(48))
    mixed.add(codes[2 * third :])
    del codes
    ok = True
    for nq in (1, 100):
        queries = Codes.from_packed(rng.integers(0, 256, (nq, 8), dtype=np.uint8), 64)
        with _faiss.omp_threads(1):
            d_ref, i_ref = flat.search(queries.packed, 10)
        res = single.search(queries, 10)
        same = bool(np.array_equal(res.ids, i_ref) and np.array_equal(res.distances, d_ref))
        ok &= same

        def bare(q=queries):
            with _faiss.omp_threads(1):
                flat.search(q.packed, 10)

        for name, index in (("single 64", single), ("mixed 32/48/64", mixed)):
            t_faiss, t_index = interleaved(bare, lambda q=queries, index=index: index.search(q, 10), repeats)
            print(
                f"search  n={n:>11,}  {name:<15} nq={nq:<4} faiss {t_faiss * 1e3:9.2f} ms  index {t_index * 1e3:9.2f} "
                f"ms  ratio {t_faiss / t_index:6.3f}  queries/s/core {nq / t_index:10.1f}"
                + ("" if name != "single 64" else f"  equal={same}")
            )
    return ok


def add_part(n: int) -> None:
    rng = np.random.default_rng(1)
    packed = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    batches = [Codes.from_packed(packed[s : s + BATCH], 64) for s in range(0, n, BATCH)]
    faiss = faiss_module()

    def bare() -> None:
        index = faiss.IndexBinaryFlat(64)
        for b in batches:
            index.add(b.packed)

    def ours() -> None:
        index = TruncatedHammingIndex()
        for b in batches:
            index.add(b)

    t_faiss, t_index = interleaved(bare, ours, 3)
    print(
        f"add     n={n:>11,}  batches of {BATCH:,}: faiss {t_faiss:7.3f} s  index {t_index:7.3f} s  ratio "
        f"{t_faiss / t_index:6.3f}  index ns/code {t_index / n * 1e9:7.1f}  faiss ns/code {t_faiss / n * 1e9:7.1f}"
    )


def files_part(n: int, mixed: bool, directory: Path, repeats: int) -> None:
    rng = np.random.default_rng(2)
    index = TruncatedHammingIndex()
    packed = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    if mixed:
        codes = Codes.from_packed(packed, 64)
        third = n // 3
        index.add(codes[:third].truncate(32))
        index.add(codes[third : 2 * third].truncate(48))
        index.add(codes[2 * third :])
    else:
        index.add(Codes.from_packed(packed, 64))
    ids = index.get_ids()
    faiss = faiss_module()
    flat = _faiss.flat_index(packed)
    del packed
    fast = resolve_checksum("auto")  # xxh3_128 with pbeh[fast-checksum], else sha256
    ours_path, sha_path = directory / "i.safetensors", directory / "sha.safetensors"
    faiss_path, ids_path = directory / "f.faissindex", directory / "ids.npy"

    def faiss_save() -> None:
        faiss.write_index_binary(flat, str(faiss_path))
        np.save(ids_path, ids)

    def faiss_load() -> None:
        faiss.read_index_binary(str(faiss_path))
        np.load(ids_path)

    index.save(sha_path, checksum="sha256")
    runs = {
        f"save {fast}": interleaved_runs(faiss_save, lambda: index.save(ours_path), repeats),
        f"load {fast}": interleaved_runs(faiss_load, lambda: TruncatedHammingIndex.load(ours_path), repeats),
        "load verify=False": interleaved_runs(
            faiss_load, lambda: TruncatedHammingIndex.load(ours_path, verify=False), repeats
        ),
    }
    if fast != "sha256":
        runs["save sha256"] = interleaved_runs(faiss_save, lambda: index.save(sha_path, checksum="sha256"), repeats)
        runs["load sha256"] = interleaved_runs(faiss_load, lambda: TruncatedHammingIndex.load(sha_path), repeats)
    arrays = arrays_bytes(index)
    t_hash = {name: checksum_seconds(ours_path, name) for name in dict.fromkeys(("sha256", fast))}
    gc.collect()
    tracemalloc.start()
    index.save(ours_path)
    save_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    gc.collect()
    tracemalloc.start()
    loaded = TruncatedHammingIndex.load(ours_path)
    load_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    same = bool(np.array_equal(loaded.get_ids(), ids))
    label = "mixed" if mixed else "single"
    faiss_bytes = faiss_path.stat().st_size + ids_path.stat().st_size
    t_faiss_read = statistics.median(runs[f"load {fast}"][0])
    for part, (ta, tb, ca, cb) in runs.items():
        t_a, t_b, cpu = statistics.median(ta), statistics.median(tb), statistics.median(ca) / statistics.median(cb)
        print(
            f"files   n={n:>11,}  {label:<6} {part:<17} faiss {t_a:6.3f} s  index {t_b:6.3f} s  ratio {t_a / t_b:6.3f}"
            f"  best-of-{repeats} {min(ta) / min(tb):6.3f}  CPU-time {cpu:6.3f}"
        )
    size = ours_path.stat().st_size
    print(
        f"files   n={n:>11,}  {label:<6} checksum alone over the file: "
        + ", ".join(f"{name} {t:5.3f} s ({size / t / 1e9:5.2f} GB/s)" for name, t in t_hash.items())
        + f" | faiss read {faiss_bytes / t_faiss_read / 1e9:4.2f} GB/s | peak/arrays save {save_peak / arrays:5.3f} "
        f"(extra) load {load_peak / arrays:5.3f} (incl. the loaded arrays) | ids equal={same}"
    )
    for p in (ours_path, sha_path, faiss_path, ids_path):
        p.unlink()


def checksum_seconds(path: Path, algorithm: str) -> float:
    """Median time of ``algorithm`` alone over the bytes of ``path`` (about what the checksum covers), in memory."""
    data = path.read_bytes()

    def run() -> None:
        digest = _new_digest(algorithm)
        digest.update(data)
        digest.hexdigest()

    return statistics.median(timed(run) for _ in range(5))


def checksum_part(directory: Path, repeats: int) -> None:
    """GB/s of the candidate checksums (in memory, and beside a read from the page cache)."""
    size, block = 256 << 20, 1 << 20
    data = np.random.default_rng(5).integers(0, 256, size, dtype=np.uint8)
    view = memoryview(data).cast("B")
    names = ["sha256"] + (["xxh3_128"] if checksum_available("xxh3_128") else [])

    def speed(fn: Callable[[], object]) -> float:
        fn()
        return size / statistics.median(timed(fn) for _ in range(repeats)) / 1e9

    def streamed(name: str) -> Callable[[], object]:
        def run() -> None:
            digest = _new_digest(name)
            for s in range(0, size, block):
                digest.update(view[s : s + block])
            digest.hexdigest()

        return run

    def crc32() -> None:
        value = 0
        for s in range(0, size, block):
            value = zlib.crc32(view[s : s + block], value)

    figures = {f"{name} (one stream)": speed(streamed(name)) for name in names}
    figures["zlib.crc32 (one stream)"] = speed(crc32)
    for name in names:
        for workers in (1, 2):
            with ThreadPoolExecutor(workers) as pool:

                def per_block(name: str = name, pool: ThreadPoolExecutor = pool) -> None:
                    def one(s: int) -> str:
                        digest = _new_digest(name)
                        digest.update(view[s : s + block])
                        return digest.hexdigest()

                    list(pool.map(one, range(0, size, block)))

                figures[f"{name} per-block digests, {workers} thread(s)"] = speed(per_block)
    path = directory / "checksum.bin"
    data.tofile(path)
    out = memoryview(np.empty(block, np.uint8)).cast("B")

    def read(name: str | None) -> Callable[[], object]:
        def run() -> None:
            digest = _new_digest(name) if name else None
            with open(path, "rb", buffering=0) as fh:
                while got := fh.readinto(out):
                    if digest is not None:
                        digest.update(out[:got])

        return run

    figures["read from the page cache (1 MiB blocks)"] = speed(read(None))
    for name in names:
        figures[f"read + {name}"] = speed(read(name))
    path.unlink()
    for what, gbs in figures.items():
        print(f"checksum  {what:<42} {gbs:6.2f} GB/s")


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray, p: float = 0.1) -> np.ndarray:
    out = np.empty((n, 8), dtype=np.uint8)
    for s in range(0, n, 1 << 20):
        m = min(n, s + (1 << 20)) - s
        bits = np.unpackbits(centres[rng.integers(0, len(centres), m)], axis=1)
        out[s : s + m] = np.packbits(bits ^ (rng.random((m, 64)) < p), axis=1)
    return out


def ivf_part(n: int, nprobes: list[int], repeats: int) -> None:
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 256, (max(1, n // 1000), 8), dtype=np.uint8)
    codes = Codes.from_packed(clustered(rng, n, centres), 64)
    queries = Codes.from_packed(clustered(rng, 100, centres), 64)
    flat = TruncatedHammingIndex()
    flat.add(codes)
    ivf = TruncatedHammingIndex(backend=IVFBackend(min_size=1))
    ivf.add(codes)
    del codes
    t_build = timed(lambda: ivf.search(queries[:1], 10))
    seg = ivf._segments[64]
    print(f"ivf     n={n:>11,}  nlist {seg._ivf.nlist}  train+add {t_build:6.1f} s")
    exact = flat.search(queries, 10)
    kth = exact.distances[:, 9:10]
    for nprobe in nprobes:
        approx = ivf.search(queries, 10, nprobe=nprobe)
        valid = approx.ids >= 0
        tie_aware = float(((approx.distances <= kth) & valid).sum() / approx.ids.size)
        by_ids = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.ids, exact.ids, strict=True)]))
        t_flat, t_ivf = interleaved(
            lambda: flat.search(queries, 10), lambda nprobe=nprobe: ivf.search(queries, 10, nprobe=nprobe), repeats
        )
        print(
            f"ivf     n={n:>11,}  nprobe {nprobe:>4}  recall@10 tie-aware {tie_aware:6.3f}  by ids {by_ids:6.3f}  "
            f"speed-up {t_flat / t_ivf:7.1f}x  ivf queries/s/core {100 / t_ivf:10.1f}  flat {100 / t_flat:8.1f}"
        )


def milvus_part(directory: Path) -> bool:
    from pbeh.index import MilvusBackend

    rng = np.random.default_rng(4)
    n = 100_000
    codes = Codes.from_packed(rng.integers(0, 256, (n, 8), dtype=np.uint8), 64)
    third = n // 3
    parts = [codes[:third].truncate(32), codes[third : 2 * third].truncate(48), codes[2 * third :]]
    flat = TruncatedHammingIndex()
    backend = MilvusBackend(str(directory / "bench.db"), collection_prefix="bench")
    milvus = TruncatedHammingIndex(backend=backend)
    t_flat = sum(timed(lambda part=part: flat.add(part)) for part in parts)
    t_milvus = sum(timed(lambda part=part: milvus.add(part)) for part in parts)
    print(
        f"milvus  n={n:>11,}  insert: index {n / t_flat:12.0f} codes/s  Milvus Lite {n / t_milvus:9.0f} codes/s  "
        f"ratio {t_flat / t_milvus:8.5f}"
    )
    ok = True
    for q_bits, nq in ((64, 1), (64, 100), (40, 100)):
        queries = Codes.from_packed(rng.integers(0, 256, (nq, 8), dtype=np.uint8), 64).truncate(q_bits)
        a, b = flat.search(queries, 10), milvus.search(queries, 10)
        same = all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("ids", "distances", "scores"))
        ok &= same
        t_f, t_m = interleaved(lambda q=queries: flat.search(q, 10), lambda q=queries: milvus.search(q, 10), 3)
        print(
            f"milvus  n={n:>11,}  {q_bits}-bit queries nq={nq:<4} index {nq / t_f:9.1f} q/s  Milvus Lite "
            f"{nq / t_m:8.1f} q/s  ratio {t_f / t_m:7.4f}  equal={same}"
        )
    backend.close()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--parts", nargs="+", default=["search", "add", "files", "ivf", "milvus"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min), cpus: {os.cpu_count()}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="pbeh-index-bench-") as tmp:
        if "checksum" in args.parts:
            checksum_part(Path(tmp), args.repeats)
        for n in args.sizes:
            if "search" in args.parts:
                ok &= search_part(n, args.repeats)
            gc.collect()
            if "add" in args.parts:
                add_part(n)
            gc.collect()
            if "files" in args.parts:
                files_part(n, False, Path(tmp), args.repeats)
                files_part(n, True, Path(tmp), args.repeats)
            gc.collect()
            if "ivf" in args.parts:
                ivf_part(n, args.nprobe, args.repeats)
            gc.collect()
        if "milvus" in args.parts:
            ok &= milvus_part(Path(tmp))
    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min)")
    if not ok:
        print("FAILED: a correctness check failed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
