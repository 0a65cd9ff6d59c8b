"""Tests of pbeh.models.prompthash: shapes, batch independence, nested prefixes, the Mamba layer against a sequential
scan, losses falling on a tiny task, save/load round trips, the parity mode's labelling, and the stream harness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pbeh.codes import Codes
from pbeh.data import synthetic_stream
from pbeh.index import TruncatedHammingIndex
from pbeh.models.prompthash import LossWeights, PromptHash, caption_embeddings, fit, run_on_stream
from pbeh.models.prompthash.fusion import GRN, GatedFusion, reference_selective_scan
from pbeh.models.prompthash.heads import HashHeads, check_lengths
from pbeh.models.prompthash.losses import (
    CodeBuffers,
    affinity,
    bayesian_pairwise_loss,
    info_nce,
    quantization_loss,
)
from pbeh.models.prompthash.prompts import AffinityPrompt
from pbeh.serialization import FormatError

SMALL = {"dim": 16, "n_heads": 2, "aux_bits": 32, "hidden_dim": 32}


def _task(n: int = 48, n_classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.eye(n_classes, dtype=np.uint8)[rng.integers(0, n_classes, n)]
    labels[: n // 4, (np.arange(n // 4) + 1) % n_classes] = 1  # some multi-label items
    image = (labels @ rng.normal(size=(n_classes, 12)) + 0.3 * rng.normal(size=(n, 12))).astype(np.float32)
    text = (labels @ rng.normal(size=(n_classes, 6)) + 0.3 * rng.normal(size=(n, 6))).astype(np.float32)
    return image, text, labels


def _embeddings(n_classes: int = 4, width: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_classes, width)).astype(np.float32)


def _model(**kwargs) -> PromptHash:
    options = {"n_bits": (8, 16), "seed": 3, **SMALL, **kwargs}
    return PromptHash(12, 6, _embeddings(), **options)


# ---------------------------------------------------------------------------------------------------- fusion
def test_mamba_mixer_matches_sequential_scan_reference():
    torch.manual_seed(0)
    fusion = GatedFusion(8, n_heads=2, d_conv=3).eval()
    with torch.no_grad():  # move off the default initialisation so every term matters
        fusion.mixer.A_log.add_(torch.randn_like(fusion.mixer.A_log))
        fusion.mixer.D.normal_()
        fusion.mixer.conv1d.bias.normal_()
        x = torch.randn(3, 7, 8)
        got = fusion.mixer(x)
        want = reference_selective_scan(fusion.mixer, x)
    assert got.abs().mean() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the reference is sensitive: dropping the skip term D changes it
        fusion.mixer.D.zero_()
        assert not torch.allclose(got, reference_selective_scan(fusion.mixer, x), atol=1e-3)


def test_fusion_causal_first_token_and_batch_modes():
    torch.manual_seed(0)
    fusion = GatedFusion(8, n_heads=2).eval()
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    with torch.no_grad():
        tokens = torch.stack([a, b], dim=1)
        other = torch.stack([a, torch.randn(6, 8)], dim=1)
        # the scan is causal: the first token's mixer output ignores the second token
        torch.testing.assert_close(fusion.mamba(tokens)[:, 0], fusion.mamba(other)[:, 0])
        a2, b2 = fusion(a, b)
        a1, _ = fusion(a[:1], b[:1])
        torch.testing.assert_close(a1, a2[:1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.cat([a2, b2], 1).norm(dim=1), torch.ones(6))
        p2, _ = fusion(a, b, batch_mode="batch")
        p1, _ = fusion(a[:1], b[:1], batch_mode="batch")
        assert not torch.allclose(p1, p2[:1], atol=1e-4)  # the released quirk: output depends on the batch
    with pytest.raises(ValueError, match="batch_mode: expected one of"):
        fusion(a, b, batch_mode="rows")
    with pytest.raises(ValueError, match=r"a, b: expected two tensors of shape \(batch, 8\)"):
        fusion(a, b[:, :4])
    with pytest.raises(ValueError, match="n_heads: expected a divisor"):
        GatedFusion(8, n_heads=3)


def test_grn_starts_as_identity_and_is_per_item():
    grn = GRN(4)
    y = torch.randn(5, 2, 4)
    torch.testing.assert_close(grn(y), y)
    with torch.no_grad():
        grn.gamma.fill_(0.5)
    torch.testing.assert_close(grn(y)[:2], grn(y[:2]))
    g = y.norm(dim=1, keepdim=True)
    torch.testing.assert_close(grn(y), 0.5 * y * g / (g.mean(-1, keepdim=True) + 1e-6) + y)


# ---------------------------------------------------------------------------------------------------- prompts
def test_caption_embeddings_with_minilm_and_routes():
    from pbeh.encoders import TextEncoder, minilm_path

    encoder = TextEncoder.from_pretrained(minilm_path(), local_files_only=True)
    emb = caption_embeddings(["dog", "cat", "sky_line"], encoder)
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    direct = encoder.encode_texts(["This is an image containing sky line."], show_progress_bar=False)[0]
    np.testing.assert_allclose(emb[2], direct / np.linalg.norm(direct), rtol=1e-4, atol=1e-5)
    prompt = AffinityPrompt(emb, dim=8)
    caption = prompt.caption_from_labels(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    want = torch.nn.functional.normalize(torch.from_numpy(emb[0] + emb[1]), dim=0)
    torch.testing.assert_close(caption[0], want)
    torch.testing.assert_close(caption[1], torch.nn.functional.normalize(torch.from_numpy(emb.sum(0)), dim=0))
    with pytest.raises(ValueError, match="template: expected a str with exactly one"):
        caption_embeddings(["dog"], encoder, template="no slot")
    with pytest.raises(TypeError, match="encoder: expected a text encoder"):
        caption_embeddings(["dog"], object())
    with pytest.raises(ValueError, match="class_embeddings: expected a 2-D array"):
        AffinityPrompt(np.zeros(3, np.float32), dim=4)


def test_caption_embeddings_with_tiny_clip():
    from test_encoders import tiny_clip_model, tiny_clip_processor, tiny_clip_tokenizer

    from pbeh.encoders import CLIPEncoder

    tok = tiny_clip_tokenizer()
    encoder = CLIPEncoder(tiny_clip_model(tok), tok, tiny_clip_processor(), device="cpu")
    emb = caption_embeddings(["cat", "dog"], encoder)
    assert emb.shape == (2, 32)
    assert not np.allclose(emb[0], emb[1])
    model = PromptHash(12, 6, emb, n_bits=8, **SMALL)
    assert model.encode(np.ones((2, 12), np.float32), "image").n_bits == 8


# ---------------------------------------------------------------------------------------------------- heads
def test_heads_nested_prefix_and_separate():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    nested = HashHeads(8, lengths=(16, 4, 8), nested=True, aux_bits=0)
    out = nested(x)
    assert nested.lengths == (4, 8, 16)
    assert "aux" not in out
    for k in (4, 8):
        assert torch.equal(out[k], out[16][:, :k])
    separate = HashHeads(8, lengths=(4, 8), aux_bits=12)
    out = separate(x)
    assert out[4].shape == (4, 4)
    assert out["aux"].shape == (4, 12)
    assert out[4].abs().max() < 1
    assert not torch.allclose(out[4], out[8][:, :4])
    with pytest.raises(ValueError, match=r"n_bits: expected one of the trained lengths \[4, 8\], got 5"):
        separate.check_length(5)
    with pytest.raises(ValueError, match="aux_bits: this model has no auxiliary code"):
        nested.decode(4, out[4])
    with pytest.raises(ValueError, match="n_bits: expected distinct code lengths"):
        check_lengths((8, 8))
    with pytest.raises(TypeError, match="n_bits: expected an int or a sequence"):
        check_lengths("16")


# ---------------------------------------------------------------------------------------------------- losses
def test_losses_against_direct_formulas():
    torch.manual_seed(0)
    buf, h = torch.randn(5, 8), torch.tanh(torch.randn(3, 8))
    sim = (torch.rand(5, 3) > 0.5).float()
    s = 0.5 * buf @ h.T
    want = torch.mean(torch.log1p(torch.exp(s)) - sim * s)
    torch.testing.assert_close(bayesian_pairwise_loss(buf, h, sim), want)
    positive = sim > 0
    balanced = 0.5 * ((torch.log1p(torch.exp(s)) - s)[positive].mean() + torch.log1p(torch.exp(s))[~positive].mean())
    torch.testing.assert_close(bayesian_pairwise_loss(buf, h, sim, balance=True), balanced)
    only_negative = bayesian_pairwise_loss(buf, h, torch.zeros_like(sim), balance=True)
    torch.testing.assert_close(only_negative, torch.log1p(torch.exp(s)).mean())
    target = torch.sign(torch.randn(3, 8))
    torch.testing.assert_close(quantization_loss(h, target), ((h - target) ** 2).sum() / 24)
    a = torch.nn.functional.normalize(torch.randn(4, 6), dim=1)
    assert float(info_nce(a, a, 0.07)) < float(info_nce(a, a.flip(0), 0.07))
    assert float(affinity(a, a)) == pytest.approx(1.0)
    assert 1 / (1 + np.log(2)) < float(affinity(a, -a)) < 1.0
    with pytest.raises(ValueError, match="buffer, h, similarity: expected"):
        bayesian_pairwise_loss(buf, h, sim.T)
    with pytest.raises(ValueError, match="intra: expected a weight >= 0"):
        LossWeights(intra=-1.0)
    with pytest.raises(ValueError, match=r"balance_pairs: expected 0\.0"):
        LossWeights(balance_pairs=0.5)
    with pytest.raises(ValueError, match="temperature_local"):
        LossWeights(temperature_local=0.0)


def test_code_buffers_nested_prefixes_and_targets():
    buffers = CodeBuffers(6, [4, 8, "aux"], aux_bits=16, generator=torch.Generator().manual_seed(0), nested=True)
    assert torch.equal(buffers.image[4], buffers.image[8][:, :4])
    assert torch.equal(buffers.targets[8], torch.where(buffers.image[8] + buffers.text[8] >= 0, 1.0, -1.0))
    assert buffers.image["aux"].shape == (6, 16)


# ---------------------------------------------------------------------------------------------------- model
def test_default_codes_are_batch_independent_and_label_free():
    image, text, labels = _task()
    model = _model()
    fit(model, (image, text, labels), epochs=2, batch_size=16, seed=0)
    for modality, feats in (("image", image), ("text", text)):
        full = model.encode(feats, modality, n_bits=16, batch_size=len(feats))
        for batch_size in (1, 7):
            assert model.encode(feats, modality, n_bits=16, batch_size=batch_size) == full
        # one item alone, and the same item among other items, gets the same code
        assert model.encode(feats[5:6], modality, n_bits=16) == full[5:6]
    assert model.encode(image, "image", n_bits=8).n_bits == 8
    assert len(model.encode(np.zeros((0, 12), np.float32), "image")) == 0


def test_parity_codes_depend_on_batch_labels_and_partner():
    image, text, labels = _task()
    model = _model(mode="parity")
    fit(model, (image, text, labels), epochs=2, batch_size=16, seed=0)
    img_a, _ = model.encode_paired(image, text, labels, n_bits=16, batch_size=len(image))
    img_b, _ = model.encode_paired(image, text, labels, n_bits=16, batch_size=7)
    other = np.roll(labels, 1, axis=1)
    img_c, _ = model.encode_paired(image, text, other, n_bits=16, batch_size=len(image))
    assert img_a != img_b  # batch and labels change an image's code: a leak, hence "parity"
    assert img_a != img_c
    with pytest.raises(ValueError, match="mode: encode needs a 'default'-mode model"):
        model.encode(image, "image")
    with pytest.raises(ValueError, match="mode: encode_paired needs a 'parity'-mode model"):
        _model().encode_paired(image, text, labels)
    with pytest.raises(ValueError, match=r"labels: expected shape \(48, 4\)"):
        model.encode_paired(image, text, labels[:, :3])


def test_input_errors_name_the_argument():
    model = _model()
    with pytest.raises(ValueError, match=r"features: expected shape \(batch, 12\) for image features, got \(3, 6\)"):
        model.encode(np.zeros((3, 6), np.float32), "image")
    with pytest.raises(TypeError, match="features: expected floating-point image features"):
        model.encode(np.zeros((3, 12), np.int64), "image")
    with pytest.raises(ValueError, match="features: expected finite"):
        model.encode(np.full((1, 6), np.nan, np.float32), "text")
    with pytest.raises(ValueError, match=r"modality: expected one of \['image', 'text'\]"):
        model.encode(np.zeros((1, 6), np.float32), "audio")
    with pytest.raises(ValueError, match="mode: expected one of"):
        _model(mode="honest")
    with pytest.raises(ValueError, match=r"n_bits: expected one of the trained lengths \[8, 16\], got 12"):
        model.encode(np.zeros((1, 6), np.float32), "text", n_bits=12)
    with pytest.raises(TypeError, match=r"train: expected a pbeh\.data\.Split"):
        fit(model, np.zeros((3, 12)))
    with pytest.raises(TypeError, match="model: expected a PromptHash"):
        fit(object(), _task())


def test_nested_codes_are_prefixes_and_share_one_index():
    image, text, labels = _task()
    model = _model(nested=True)
    fit(model, (image, text, labels), epochs=2, batch_size=16, seed=0)
    long = model.encode(image, "image", n_bits=16)
    short = model.encode(image, "image", n_bits=8)
    assert short == long.truncate(8)
    index = TruncatedHammingIndex()
    index.add(long)
    q = model.encode(text, "text", n_bits=8)
    result = index.search(q, k=5)
    assert (result.n_bits_compared == 8).all()
    # brute force: the same top distances as comparing the 8-bit prefixes directly
    brute = np.sort(q.hamming(short), axis=1)[:, :5]
    np.testing.assert_array_equal(result.distances, brute)


@pytest.mark.parametrize("mode", ["default", "parity"])
def test_losses_fall_on_a_tiny_task(mode):
    image, text, labels = _task(n=64)
    model = _model(mode=mode)
    report = fit(model, (image, text, labels), epochs=12, batch_size=32, lr=3e-3, seed=0)
    first, last = report.losses[0], report.losses[-1]
    assert last["total"] < 0.8 * first["total"]
    for term in ("inter_16", "quantization_16", "global_alignment", "local_alignment"):
        assert last[term] < first[term], term
    if mode == "default":
        assert last["route"] < first["route"]
    else:
        assert "route" not in last


def test_training_is_seeded():
    image, text, labels = _task()
    codes = []
    for _ in range(2):
        model = _model()
        fit(model, (image, text, labels), epochs=2, batch_size=16, seed=5)
        codes.append(model.encode(text, "text"))
    assert codes[0] == codes[1]


@pytest.mark.parametrize("options", [{}, {"nested": True, "aux_bits": 0}, {"mode": "parity"}])
def test_save_load_identical_codes_and_bytes(tmp_path, options):
    image, text, labels = _task()
    model = _model(**options)
    fit(model, (image, text, labels), epochs=1, batch_size=16, seed=0)
    model.save_pretrained(tmp_path / "a")
    loaded = PromptHash.from_pretrained(tmp_path / "a")
    assert loaded.get_config() == model.get_config()
    assert loaded.centered
    if model.mode == "default":
        for k in (8, 16):
            assert loaded.encode(image, "image", n_bits=k) == model.encode(image, "image", n_bits=k)
            assert loaded.encode(text, "text", n_bits=k) == model.encode(text, "text", n_bits=k)
    else:
        assert loaded.encode_paired(image, text, labels) == model.encode_paired(image, text, labels)
    loaded.save_pretrained(tmp_path / "b")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_damaged_files_raise_format_error(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(FormatError, match="no saved PromptHash"):
        PromptHash.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({**config, "pbeh_kind": "model"}))
    with pytest.raises(FormatError, match="expected 'prompthash'"):
        PromptHash.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "dim": 8, "n_heads": 2}))
    with pytest.raises(FormatError, match="has shape"):
        PromptHash.from_pretrained(tmp_path)
    del config["mode"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match="missing key 'mode'"):
        PromptHash.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(FormatError):
        PromptHash.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):
        PromptHash.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------- stream harness
def _stream():
    return synthetic_stream(n_tasks=2, classes_per_task=2, items_per_class=20, image_dim=12, text_dim=6, seed=0)


def test_run_on_stream_joint_and_continual_against_direct_metrics():
    from pbeh.metrics import map_at_k

    stream = _stream()
    emb = _embeddings(stream.n_classes)
    kwargs = {
        "n_bits": (8, 16),
        "class_embeddings": emb,
        "epochs": 2,
        "dim": 16,
        "seed": 1,
        "model_kwargs": {"n_heads": 2, "aux_bits": 16},
    }
    joint = run_on_stream(stream, **kwargs)
    assert joint["label"] == "default"
    assert joint["protocol"] == "joint"
    r = joint["results"]["16"]
    assert r["R_i2t"][0] == [None, None]
    assert r["bwt_i2t"] is None
    assert r["mean_i2t"] == pytest.approx(np.mean(r["R_i2t"][1]))
    # the same numbers by hand: retrain with the same seed, encode, score
    model = PromptHash(stream.image_dim, stream.text_dim, emb, n_bits=(8, 16), dim=16, seed=1, n_heads=2, aux_bits=16)
    fit(model, stream.joint().train, epochs=2, seed=1)
    task = stream[1]
    want = map_at_k(
        model.encode(task.query.image, "image", n_bits=16),
        model.encode(task.database.text, "text", n_bits=16),
        task.query.labels,
        task.database.labels,
        ties="average",
    )
    assert r["R_i2t"][1][1] == pytest.approx(want)
    db = stream.joint().database
    queries = stream.joint().query
    want_unified = map_at_k(
        model.encode(queries.text, "text", n_bits=16),
        model.encode(db.image, "image", n_bits=16),
        queries.labels,
        db.labels,
        ties="average",
    )
    assert r["unified_t2i_tie_avg"] == pytest.approx(want_unified)
    assert 0 < r["unified_chance"] < 1
    # P@10 and the newest task's share of the top 10, tie-averaged, by brute force over every stored code
    q_codes = model.encode(queries.text, "text", n_bits=16).to_bool()
    db_codes = model.encode(db.image, "image", n_bits=16).to_bool()
    relevant = (queries.labels @ db.labels.T) > 0
    newest = np.concatenate([np.full(len(t.database.labels), t_i == len(stream) - 1) for t_i, t in enumerate(stream)])
    q_task = np.concatenate([np.full(len(t.query.labels), t_i) for t_i, t in enumerate(stream)])
    p10, share = [], []
    for qi in range(len(q_codes)):
        dist = (q_codes[qi][None, :] != db_codes).sum(axis=1)
        cut = np.sort(dist)[9]
        inside, tied = dist < cut, dist == cut
        free = 10 - inside.sum()
        p10.append((relevant[qi, inside].sum() + free * relevant[qi, tied].mean()) / 10)
        share.append((newest[inside].sum() + free * newest[tied].mean()) / 10)
    p10, share = np.array(p10), np.array(share)
    assert r["unified_t2i_p10"] == pytest.approx(p10.mean())
    assert r["unified_t2i_p10_per_task"] == pytest.approx([p10[q_task == t].mean() for t in range(len(stream))])
    assert r["unified_t2i_newest_share_per_task"] == pytest.approx(
        [share[q_task == t].mean() for t in range(len(stream))]
    )

    cont = run_on_stream(stream, protocol="continual", **kwargs)
    rc = cont["results"]["8"]
    assert rc["R_i2t"][0][0] is not None
    assert rc["R_i2t"][0][1] is None
    assert rc["bwt_i2t"] is not None
    assert rc["bwt_i2t"] == pytest.approx(rc["R_i2t"][1][0] - rc["R_i2t"][0][0])

    parity = run_on_stream(stream, mode="parity", **kwargs)
    assert parity["label"] == "parity"
    nested = run_on_stream(stream, nested=True, **kwargs)
    assert nested["method"] == "prompthash-nested"
    assert nested["results"]["8"]["bytes_per_item"] == 2
    with pytest.raises(ValueError, match="protocol: expected one of"):
        run_on_stream(stream, protocol="online", **kwargs)
    with pytest.raises(TypeError, match=r"stream: expected a pbeh\.data\.TaskStream"):
        run_on_stream([stream[0]], **kwargs)


def test_codes_type_round_trip_into_index():
    image, _, _ = _task()
    model = _model()
    codes = model.encode(image, "image")
    assert isinstance(codes, Codes)
    index = TruncatedHammingIndex()
    ids = index.add(codes, ids=np.arange(100, 100 + len(codes)))
    assert index.get_codes(ids) == codes


@pytest.mark.parametrize("module", ["fusion", "prompts", "heads", "model", "fit"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"pbeh.models.prompthash.{module}"))
    assert result.attempted > 0
    assert result.failed == 0
