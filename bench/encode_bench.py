"""Throughput of the MiniLM text encoder (texts per second) against sentence-transformers on the same texts.

Usage::

    python bench/encode_bench.py [--n-texts 512] [--batch-size 64] [--threads 2] [--repeats 3]

Texts are the first ``n_texts`` tag lines of ``mirflickr25k/all_tags.txt`` (commas turned into spaces) when the real
data is present (``PBEH_DATA`` or ``../shared/data``), else synthetic tag strings. The anchor is
``SentenceTransformer.encode`` on the same model, texts, batch size and threads, measured in the same run; the ratio
is what to compare across machines. Reports the median of ``repeats`` timed runs after one warm-up batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def load_texts(n_texts: int) -> tuple[list[str], str]:
    data = Path(os.environ.get("PBEH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    tags_file = data / "mirflickr25k" / "all_tags.txt"
    if tags_file.is_file():
        lines = [line.strip().replace(",", " ") for line in tags_file.read_text(encoding="utf-8").splitlines()]
        texts = [t for t in lines if t][:n_texts]
        if len(texts) == n_texts:
            return texts, str(tags_file)
    words = ["sky", "sunset", "dog", "beach", "red", "flower", "night", "city", "portrait", "tree", "snow", "car"]
    texts = [" ".join(words[(i * k) % len(words)] for k in range(1, 2 + i % 6)) for i in range(n_texts)]
    return texts, "synthetic"


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from pbeh.encoders import TextEncoder, minilm_path

    torch.set_num_threads(args.threads)
    texts, source = load_texts(args.n_texts)
    encoder = TextEncoder.from_pretrained(minilm_path(), local_files_only=True)
    encoder.encode_texts(texts[: args.batch_size], batch_size=args.batch_size, show_progress_bar=False)  # warm-up
    ours = median_seconds(
        lambda: encoder.encode_texts(texts, batch_size=args.batch_size, show_progress_bar=False, normalize=True),
        args.repeats,
    )
    print(f"texts: {len(texts)} from {source}; batch {args.batch_size}; torch threads {torch.get_num_threads()}")
    print(f"pbeh TextEncoder (MiniLM-L6): {len(texts) / ours:8.1f} texts/s  ({ours:.3f} s, median of {args.repeats})")

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("sentence-transformers not installed: no anchor")
        return
    anchor = SentenceTransformer(str(minilm_path()), device="cpu")
    anchor.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    theirs = median_seconds(lambda: anchor.encode(texts, batch_size=args.batch_size), args.repeats)
    print(f"sentence-transformers anchor:  {len(texts) / theirs:8.1f} texts/s  ({theirs:.3f} s)")
    print(f"ratio pbeh / anchor (throughput): {theirs / ours:.2f}")


if __name__ == "__main__":
    main()
