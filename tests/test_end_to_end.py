"""End to end: raw images and texts → frozen encoders → cached features → prompts → codes → index → search.

Uses a tiny random CLIP loaded from a local folder (no network) and the real all-MiniLM-L6-v2 shipped in a PyPI wheel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbeh import Codes, ContinualTrainer, TrainerConfig, TruncatedHammingIndex
from pbeh.data import class_incremental_split
from pbeh.encoders import CLIPEncoder, FeatureCache, TextEncoder, minilm_path
from pbeh.extension import FixedSchedule
from pbeh.model import CrossModalHashModel

pytest.importorskip("PIL")
from test_encoders import random_images, tiny_clip_model, tiny_clip_processor, tiny_clip_tokenizer

WORDS = [["cat", "kitten", "whiskers"], ["dog", "puppy", "bark"], ["sea", "wave", "beach"], ["car", "road", "wheel"]]


def _captions(labels: np.ndarray, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS[int(c)], 3)) for c in labels]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> CLIPEncoder:
    folder = tmp_path_factory.mktemp("tiny_clip_e2e")
    tokenizer = tiny_clip_tokenizer()
    tiny_clip_model(tokenizer, seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tiny_clip_processor().save_pretrained(folder)
    return CLIPEncoder.from_pretrained(folder, local_files_only=True)


def test_clip_images_and_texts_to_codes_through_a_continual_run(clip, tmp_path):
    n = 48
    classes = np.arange(n) % 4
    images = random_images(n, seed=1)
    texts = _captions(classes, seed=2)
    ids = np.arange(n, dtype=np.int64)

    calls = {"image": 0, "text": 0}

    def encode_images(items):
        calls["image"] += 1
        return clip.encode_images(items, batch_size=16, show_progress_bar=False)

    def encode_texts(items):
        calls["text"] += 1
        return clip.encode_texts(items, batch_size=16, show_progress_bar=False)

    image_cache = FeatureCache(tmp_path / "image.safetensors", modality="image")
    text_cache = FeatureCache(tmp_path / "text.safetensors", modality="text")
    image_features = image_cache.get_or_encode(ids, images, encode_images, encoder_name="tiny-clip")
    text_features = text_cache.get_or_encode(ids, texts, encode_texts, encoder_name="tiny-clip")
    assert image_features.shape == (n, clip.dim)
    assert text_features.shape == (n, clip.dim)
    # A second run reads the cache and never calls the encoder.
    again = FeatureCache(tmp_path / "image.safetensors", modality="image")
    np.testing.assert_array_equal(
        again.get_or_encode(ids, images, encode_images, encoder_name="tiny-clip"), image_features
    )
    assert calls == {"image": 1, "text": 1}

    labels = np.eye(4, dtype=np.uint8)[classes]
    stream = class_incremental_split(
        image_features, text_features, labels, groups=[[0, 1], [2, 3]], query_fraction=0.25, seed=0, ids=ids
    )
    trainer = ContinualTrainer.for_stream(
        stream,
        n_bits=8,
        hidden_dims=(16,),
        config=TrainerConfig(epochs=2, batch_size=8, eval_k=None, samples_per_prompt=8),
        extension_policy=FixedSchedule(bits_per_task=4),
    )
    reports = trainer.fit(stream)
    assert [r.n_bits for r in reports] == [8, 12]
    assert trainer.image_index.segments == [(8, len(stream[0].database)), (12, len(stream[1].database))]
    # Same item, same code: the codes stored for the last task equal a fresh encoding of its database features.
    last = stream[1].database
    assert trainer.text_index.get_codes(last.ids) == trainer.model.encode(last.text, "text")
    # A 12-bit image query searches both segments (8-bit codes on their common prefix).
    queries = trainer.model.encode(stream[0].query.image, "image", role="query")
    result = trainer.text_index.search(queries, k=5)
    assert result.ids.shape == (len(queries), 5)
    assert set(np.unique(result.n_bits_compared)) <= {8, 12}
    assert np.all(np.isin(result.ids, ids))


def test_minilm_texts_with_wider_image_features(tmp_path):
    """Different widths (384-d text, 32-d image): a trainable input map per modality, then codes and search."""
    encoder = TextEncoder.from_pretrained(minilm_path(), local_files_only=True)
    rng = np.random.default_rng(0)
    classes = np.arange(12) % 3
    texts = _captions(classes, seed=4)
    text_features = encoder.encode_texts(texts, batch_size=8, show_progress_bar=False)
    image_features = rng.standard_normal((12, 32)).astype(np.float32)
    assert text_features.shape == (12, 384)
    model = CrossModalHashModel(32, 384, n_bits=16, hidden_dims=(32,))
    model.add_task(n_prompts=2)
    # dim = max(32, 384): the text side already has the prompt width, the image side gets a trainable map into it
    assert isinstance(model.text_proj, torch.nn.Identity)
    assert isinstance(model.image_proj, torch.nn.Linear)
    text_codes = model.encode(text_features, "text")
    image_codes = model.encode(image_features, "image")
    assert isinstance(text_codes, Codes)
    assert (text_codes.n_bits, len(text_codes)) == (16, 12)
    index = TruncatedHammingIndex()
    index.add(text_codes)
    result = index.search(image_codes, k=3)
    assert result.ids.shape == (12, 3)
    assert np.all(result.ids >= 0)
