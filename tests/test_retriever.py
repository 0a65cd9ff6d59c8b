"""Tests of pbeh.Retriever: raw items (tiny random CLIP, no network) or features -> learn -> add -> search, saved as
one folder and loaded back (offline, same results, same bytes when saved again); errors name the argument."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pbeh
from pbeh import Retriever, TrainerConfig
from pbeh.data import class_incremental_split, synthetic_stream
from pbeh.serialization import FormatError, read_json, write_json

pytest.importorskip("PIL")
from test_encoders import random_images, tiny_clip_model, tiny_clip_processor, tiny_clip_tokenizer

WORDS = [["cat", "kitten", "whiskers"], ["dog", "puppy", "bark"], ["sea", "wave", "beach"], ["car", "road", "wheel"]]
CONFIG = TrainerConfig(epochs=2, batch_size=64, select_on="last")


def _captions(classes: np.ndarray, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS[int(c)], 3)) for c in classes]


def _brute_force(retriever: Retriever, features: np.ndarray, modality: str, k: int):
    """The reference: the model's codes of the query features, searched in the target index directly."""
    other = retriever.image_index if modality == "text" else retriever.text_index
    return other.search(retriever.model.encode(features, modality, role="query"), k)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ features only
@pytest.fixture(scope="module")
def stream():
    return synthetic_stream(n_tasks=3, items_per_class=20, seed=0)


@pytest.fixture
def trained(stream):
    retriever = Retriever.create(
        image_dim=stream.image_dim, text_dim=stream.text_dim, n_bits=8, hidden_dims=(16,), config=CONFIG
    )
    reports = retriever.learn([stream[0], stream[1]])
    assert [r.name for r in reports] == ["T1", "T2"]
    return retriever


def test_features_learn_add_search_against_the_index(trained, stream):
    extra = stream[2].database
    ids = trained.add(
        image_features=extra.image[:5],
        text_features=extra.text[:5],
        ids=[10_001, 10_002, 10_003, 10_004, 10_005],
        metadata=[{"caption": f"item {i}"} for i in range(5)],
    )
    assert ids.tolist() == [10_001, 10_002, 10_003, 10_004, 10_005]
    assert 10_003 in trained.image_index
    assert 10_003 in trained.text_index
    queries = stream[0].query.image[:4]
    hits = trained.search(image_features=queries, k=7)
    expected = _brute_force(trained, queries, "image", 7)
    assert len(hits) == 4
    for q, h in enumerate(hits):
        np.testing.assert_array_equal(h.ids, expected.ids[q])
        np.testing.assert_allclose(h.scores, expected.scores[q])
    one = trained.search(text_features=extra.text[0], k=3)  # one vector -> one SearchHits
    assert isinstance(one, pbeh.retriever.SearchHits)
    by_id = {h.id: h for h in trained.search(text_features=extra.text[0], k=len(trained))}
    assert by_id[10_001].metadata == {"caption": "item 0"}
    assert by_id[10_001].task is None
    learned = int(stream[0].database.ids[0])
    assert by_id[learned].task == "T1"
    assert by_id[learned].metadata is None
    assert trained.metadata(10_002) == {"caption": "item 1"}


def test_add_assigns_the_next_free_ids_and_one_modality_alone(trained, stream):
    start = max(trained.image_index.next_id, trained.text_index.next_id)
    ids = trained.add(text_features=stream[2].database.text[:3])
    assert ids.tolist() == [start, start + 1, start + 2]
    assert start in trained.text_index
    assert start not in trained.image_index
    hits = trained.search(image_features=stream[2].database.image[0], k=len(trained.text_index))
    assert set(ids.tolist()) <= set(hits.ids.tolist())
    trained.model.class_prior.weights["text"] = 0.0  # without the class prior a query's code is its stored code
    same_side = trained.search(text_features=stream[2].database.text[0], k=len(trained.text_index), target="text")
    assert start in same_side.ids[same_side.scores == same_side.scores[0]]  # its own text is among the closest


def test_save_load_round_trip_same_results_and_same_bytes(trained, stream, tmp_path):
    trained.add(text_features=stream[2].database.text[:2], ids=[777, 778], metadata=["a", {"k": [1, 2]}])
    trained.save(tmp_path / "r")
    assert read_json(tmp_path / "r" / "retriever.json")["pbeh_kind"] == "retriever"
    loaded = Retriever.load(tmp_path / "r")
    queries = stream[1].query.image
    for a, b in zip(
        trained.search(image_features=queries, k=5), loaded.search(image_features=queries, k=5), strict=True
    ):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert a.tasks == b.tasks
        assert a.metadata == b.metadata
    assert loaded.metadata(778) == {"k": [1, 2]}
    loaded.save(tmp_path / "again")
    assert _files(tmp_path / "r") == _files(tmp_path / "again")


def test_save_replaces_atomically_and_a_failed_save_keeps_the_old_folder(trained, stream, tmp_path, monkeypatch):
    trained.save(tmp_path / "r")
    before = _files(tmp_path / "r")
    trained.add(text_features=stream[2].database.text[:1], ids=[4242])

    def fail(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(pbeh.ContinualTrainer, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        trained.save(tmp_path / "r")
    monkeypatch.undo()
    assert _files(tmp_path / "r") == before
    assert 4242 not in Retriever.load(tmp_path / "r").text_index
    trained.save(tmp_path / "r")
    assert 4242 in Retriever.load(tmp_path / "r").text_index
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no staging folder left behind


def test_learn_continues_after_load(trained, stream, tmp_path):
    trained.save(tmp_path / "r")
    loaded = Retriever.load(tmp_path / "r")
    (report,) = loaded.learn(stream[2])
    assert report.name == "T3"
    assert loaded.trainer.n_tasks_done == 3
    hit = loaded.search(image_features=stream[2].database.image[0], k=len(loaded.text_index))
    assert "T3" in hit.tasks
    assert "T1" in hit.tasks


def test_errors_name_the_argument(trained, stream, tmp_path):
    db = stream[2].database
    with pytest.raises(ValueError, match="add: expected images, texts, image_features or text_features"):
        trained.add()
    with pytest.raises(ValueError, match="texts: this Retriever has no text encoder; pass text_features="):
        trained.add(texts=["a cat"])
    with pytest.raises(ValueError, match=r"add: images and texts are pairs .* \{'image': 2, 'text': 3\}"):
        trained.add(image_features=db.image[:2], text_features=db.text[:3])
    taken = int(stream[0].database.ids[0])
    with pytest.raises(ValueError, match=rf"ids: \[{taken}\] are already stored"):
        trained.add(text_features=db.text[:1], ids=[taken])
    with pytest.raises(ValueError, match="ids: expected unique ids"):
        trained.add(text_features=db.text[:2], ids=[5000, 5000])
    with pytest.raises(ValueError, match=r"metadata\[0\]: expected a JSON-serialisable value"):
        trained.add(text_features=db.text[:1], ids=[5001], metadata=[object()])
    with pytest.raises(ValueError, match=r"text_features: expected shape \(n, 32\), got \(2, 5\)"):
        trained.add(text_features=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="search: expected exactly one of text, image"):
        trained.search(text_features=db.text[0], image_features=db.image[0])
    with pytest.raises(ValueError, match="k: expected a positive int, got 0"):
        trained.search(text_features=db.text[0], k=0)
    with pytest.raises(ValueError, match="target: expected 'image', 'text' or None"):
        trained.search(text_features=db.text[0], target="audio")
    with pytest.raises(ValueError, match=r"tasks: task 'T1' has database ids .* already stored"):
        trained.learn(stream[0])
    with pytest.raises(TypeError, match=r"tasks\[0\]: expected a pbeh\.data\.Task"):
        trained.learn(["T3"])
    with pytest.raises(ValueError, match="image_dim: give a image encoder"):
        Retriever.create(text_dim=4)
    with pytest.raises(TypeError, match="trainer: expected a ContinualTrainer"):
        Retriever("not a trainer")
    untrained = Retriever.create(image_dim=4, text_dim=3, n_bits=8, hidden_dims=(8,))
    with pytest.raises(RuntimeError, match="untrained"):
        untrained.add(text_features=np.zeros((1, 3)))


def test_load_refuses_what_is_not_a_retriever(trained, tmp_path):
    with pytest.raises(FormatError, match="holds no saved Retriever"):
        Retriever.load(tmp_path)
    trained.save(tmp_path / "r")
    meta = read_json(tmp_path / "r" / "retriever.json")
    write_json(tmp_path / "r" / "retriever.json", {**meta, "format_version": 99})
    with pytest.raises(FormatError, match=r"retriever format_version 99; this pbeh .* reads 1"):
        Retriever.load(tmp_path / "r")
    write_json(tmp_path / "r" / "retriever.json", {**meta, "pbeh_kind": "model"})
    with pytest.raises(FormatError, match="describes a pbeh 'model', not a retriever"):
        Retriever.load(tmp_path / "r")


# ------------------------------------------------------------------------------------------------ tiny CLIP
@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from pbeh.encoders import CLIPEncoder

    folder = tmp_path_factory.mktemp("tiny_clip_retriever")
    tokenizer = tiny_clip_tokenizer()
    tiny_clip_model(tokenizer, seed=5).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tiny_clip_processor().save_pretrained(folder)
    return CLIPEncoder.from_pretrained(folder, local_files_only=True)


@pytest.fixture(scope="module")
def clip_retriever(clip):
    n = 48
    classes = np.arange(n) % 4
    retriever = Retriever.create(encoder=clip, n_bits=8, hidden_dims=(16,), config=CONFIG)
    image = retriever.encode_images(random_images(n, seed=1))
    text = retriever.encode_texts(_captions(classes, seed=2))
    stream = class_incremental_split(image, text, classes, n_tasks=2, query_size=2, seed=0)
    retriever.learn(stream)
    return retriever


def test_clip_raw_items_to_search(clip_retriever, clip):
    images = random_images(4, seed=9)
    texts = ["a cat on a mat", "a dog barks", "waves on a beach", "a red car"]
    ids = clip_retriever.add(images=images, texts=texts, metadata=[{"text": t} for t in texts])
    hits = clip_retriever.search(text="a puppy", k=5)
    expected = _brute_force(clip_retriever, clip.encode_texts(["a puppy"], show_progress_bar=False), "text", 5)
    np.testing.assert_array_equal(hits.ids, expected.ids[0])
    np.testing.assert_allclose(hits.scores, expected.scores[0])
    many = clip_retriever.search(text=["a puppy", "a beach"], k=3)
    assert many[0].ids.tolist() == hits.ids[:3].tolist()
    by_image = clip_retriever.search(image=images[0], k=len(clip_retriever.text_index))
    assert int(ids[0]) in by_image.ids.tolist()
    hit = next(h for h in by_image if h.id == int(ids[0]))
    assert hit.metadata == {"text": texts[0]}
    assert len(clip_retriever.search(image=images[:2], k=2)) == 2
    pixels = torch.as_tensor(np.asarray(clip.image_processor(images=images[:1], return_tensors="np")["pixel_values"]))
    np.testing.assert_array_equal(clip_retriever.search(image=pixels[0], k=3).ids, by_image.ids[:3])


def test_clip_retriever_saves_its_encoder_and_loads_offline(clip_retriever, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip_retriever.save(tmp_path / "r")
    assert (tmp_path / "r" / "encoder" / "config.json").is_file()
    loaded = Retriever.load(tmp_path / "r")
    assert loaded.encoder("image") is loaded.encoder("text")
    a = clip_retriever.search(text="a kitten", k=6)
    b = loaded.search(text="a kitten", k=6)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores)


def test_pbeh_search_with_texts_and_images_on_a_saved_retriever(clip_retriever, tmp_path, capsys):
    """`pbeh search FOLDER --text ... / --image ...` encodes with the saved encoder once and lists what
    Retriever.search lists, with the count of unlisted items tied with the last one."""
    import json

    from pbeh.cli import main

    folder = tmp_path / "r"
    clip_retriever.save(folder)
    image_path = tmp_path / "query.png"
    random_images(1, seed=31)[0].save(image_path)
    for flag, value, query in (("--text", "a small dog", {"text": ["a small dog"]}),
                               ("--image", str(image_path), {"image": [str(image_path)]})):  # fmt: skip
        assert main(["search", str(folder), flag, value, "--k", "4", "--json"]) == 0
        entry = json.loads(capsys.readouterr().out)["queries"][0]
        (hits,) = clip_retriever.search(**query, k=4)
        assert [h["id"] for h in entry["hits"]] == hits.ids.tolist()
        assert [h["score"] for h in entry["hits"]] == pytest.approx(hits.scores.tolist())
        modality = flag[2:]
        target = clip_retriever.image_index if modality == "text" else clip_retriever.text_index
        feats = (
            clip_retriever.encode_texts(query["text"])
            if modality == "text"
            else clip_retriever.encode_images(query["image"])
        )
        everything = target.search(clip_retriever.model.encode(feats, modality, role="query"), len(target))
        assert entry["tied_unlisted"] == int((everything.scores[0, 4:] == hits.scores[-1]).sum())


def test_clip_retriever_saved_without_encoder_needs_one(clip_retriever, clip, tmp_path):
    clip_retriever.save(tmp_path / "r", include_encoders=False)
    assert not (tmp_path / "r" / "encoder").exists()
    with pytest.raises(ValueError, match=r"image_encoder: .* was saved without its image encoder \(CLIPEncoder"):
        Retriever.load(tmp_path / "r")
    loaded = Retriever.load(tmp_path / "r", encoder=clip)
    np.testing.assert_array_equal(loaded.search(text="a car", k=4).ids, clip_retriever.search(text="a car", k=4).ids)


def test_an_encoder_of_another_width_is_refused(clip_retriever):
    with pytest.raises(
        ValueError, match=r"image_encoder: its 32-d features do not fit the model's image input \(5-d\)"
    ):
        Retriever.create(encoder=clip_retriever.encoder("image"), image_dim=5, n_bits=8, hidden_dims=(8,))
