"""bench/extension.py: each policy reaches the trainer, stored bits are counted per item, the table renders."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

from pbeh.data import synthetic_stream

_BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(_BENCH))  # bench/extension.py imports its sibling bench/continual.py
_spec = importlib.util.spec_from_file_location("bench_extension", _BENCH / "extension.py")
extension = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(extension)


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream(n_tasks=3, classes_per_task=2, items_per_class=12, image_dim=12, text_dim=8, seed=1)


def _args(**overrides):
    values = {
        "epochs": 1,
        "hidden": [16],
        "delta": 3,
        "rho_mode_center": 0.1,
        "rho_collision": 0.1,
        "radius": 0,
        "rho_ties": 0.1,
        "ties_k": 10,
    }
    return argparse.Namespace(**{**values, **overrides})


def test_schedule_grows_the_code_and_stored_bits_are_per_item(stream):
    summary = extension.run("schedule", stream, n_bits=8, args=_args(), seed=3)
    assert summary["bits_per_task"] == [8, 11, 14]
    assert summary["final_bits"] == 14  # the extension decided after the last task waits for a next task
    sizes = [len(task.database) for task in stream]
    expected = (8 * sizes[0] + 11 * sizes[1] + 14 * sizes[2]) / sum(sizes)
    assert summary["mean_stored_bits"] == pytest.approx(expected)
    assert [d["n_new_bits"] for d in summary["decisions"]] == [3, 3, 3]


def test_fixed_at_b_trains_b_bits_but_files_under_the_initial_length(stream):
    summary = extension.run("fixed@12", stream, n_bits=8, args=_args(), seed=3)
    assert summary["bits_per_task"] == [12, 12, 12]
    assert summary["initial_bits"] == 8
    assert summary["policy"] == "fixed@12"
    assert summary["mean_stored_bits"] == pytest.approx(12.0)


def test_rules_are_passed_through_and_render_lists_every_policy(stream):
    never = extension.run("collision", stream, n_bits=8, args=_args(rho_collision=1.0), seed=3)
    assert never["bits_per_task"] == [8, 8, 8]  # rho = 1 never fires
    assert all("collision_i2t" in d for d in never["decisions"])  # the rule's statistics are kept per task
    ties = extension.run("ties", stream, n_bits=8, args=_args(rho_ties=0.0, ties_k=1), seed=3)
    assert all("crowded_i2t" in d for d in ties["decisions"])
    fixed = extension.run("fixed", stream, n_bits=8, args=_args(), seed=3)
    text = extension.render([never, fixed], ["# t", ""])
    assert "| 8 | fixed | 1 |" in text
    assert "| 8 | collision | 1 |" in text
    with pytest.raises(ValueError, match="policy: expected one of"):
        extension.run("sometimes", stream, n_bits=8, args=_args(), seed=3)
