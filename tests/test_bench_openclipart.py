"""bench/openclipart.py: the item, label and text rules and the sanity-check mAP (against a per-query loop)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "openclipart.py"
_spec = importlib.util.spec_from_file_location("bench_openclipart", _PATH)
openclipart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(openclipart)

_SVG = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>
    <dc:title>{title}</dc:title>
  </cc:Work></rdf:RDF></metadata>
</svg>
"""


def _brute_force_map(features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    n = len(x)
    aps, relevant_pairs = [], 0
    for q in range(n):
        others = [j for j in range(n) if j != q]
        sims = [float(x[q] @ x[j]) for j in others]
        ranked = [others[k] for k in sorted(range(len(others)), key=lambda k: -sims[k])]
        relevant = [bool((labels[q] & labels[j]).any()) for j in ranked]
        relevant_pairs += sum(relevant)
        if not any(relevant):
            continue
        hits, precisions = 0, []
        for rank, rel in enumerate(relevant, start=1):
            if rel:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / hits)
    return float(np.mean(aps)), relevant_pairs / (n * (n - 1))


def test_same_modality_map_matches_a_per_query_loop():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((37, 5)).astype(np.float32)
    labels = (rng.random((37, 4)) < 0.3).astype(np.uint8)
    labels[0] = 0  # a query with no relevant item is skipped, as in the loop
    got = openclipart.same_modality_map(features, labels, chunk=8)  # several chunks, a partial last one
    want = _brute_force_map(features, labels)
    assert got == pytest.approx(want, rel=1e-6)


def test_same_modality_map_is_one_when_features_separate_the_classes():
    labels = np.repeat(np.eye(3, dtype=np.uint8), 4, axis=0)
    features = labels.astype(np.float32) + 0.01 * np.random.default_rng(1).standard_normal((12, 3))
    value, chance = openclipart.same_modality_map(features, labels)
    assert value == pytest.approx(1.0)
    assert chance == pytest.approx(3 / 11)


def test_item_text_appends_only_the_file_words_missing_from_the_title():
    assert openclipart.item_text("Cricket Bat", Path("cricket_bat_01.png")) == "Cricket Bat"
    assert openclipart.item_text("Lemon SVG theme", Path("cdwriter_mount.png")) == "Lemon SVG theme cdwriter mount"
    title = "Cigno di spalle"
    assert openclipart.item_text(title, Path("cigno_di_spalle_architet_01.png")) == "Cigno di spalle architet"
    assert openclipart.item_text(None, Path("do-not.enter_02.png")) == "do not enter"
    assert openclipart.item_text(None, Path("0001.png")) == "clip art"


def test_svg_title_is_the_works_title_not_the_authors(tmp_path):
    good = tmp_path / "a.svg"
    good.write_text(_SVG.format(title="Chodovian&amp;#39;s  Dog"))
    assert openclipart.svg_title(good) == "Chodovian's Dog"
    empty = tmp_path / "b.svg"
    empty.write_text(_SVG.format(title=" "))
    assert openclipart.svg_title(empty) is None
    broken = tmp_path / "c.svg"
    broken.write_text("<svg><metadata>")
    assert openclipart.svg_title(broken) is None
    assert openclipart.svg_title(tmp_path / "missing.svg") is None


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_collect_items_labels_links_and_drops_small_categories(tmp_path):
    png = tmp_path / openclipart.PNG_ROOT
    svg = tmp_path / openclipart.SVG_ROOT
    for folder, names in {"food": ["apple", "pear", "plum"], "food/fruit": ["kiwi", "lime"], "tools": ["saw"]}.items():
        (png / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (png / folder / f"{name}.png").write_bytes(b"png")
    (svg / "food").mkdir(parents=True)
    (svg / "food" / "apple.svg").write_text(_SVG.format(title="Red Apple"))
    # apple is also filed under food/fruit; a link inside its own folder adds nothing
    (png / "food" / "fruit" / "apple_link.png").symlink_to("../apple.png")
    (png / "food" / "apple_again.png").symlink_to("apple.png")
    items = openclipart.collect_items(tmp_path, min_items=2)
    assert items["label_names"] == ["food", "food/fruit"]  # tools (1 item) dropped
    assert items["item_ids"] == ["food/apple.png", "food/fruit/kiwi.png", "food/fruit/lime.png",
                                 "food/pear.png", "food/plum.png"]  # fmt: skip
    assert items["labels"].tolist() == [[1, 1], [0, 1], [0, 1], [1, 0], [1, 0]]
    assert items["texts"][0] == "Red Apple"
    assert items["texts"][1] == "kiwi"
    assert (items["n_links"], items["n_pictures"], items["n_titled"]) == (2, 6, 1)
