"""pbeh.show_progress: one switch that prints the trainer's per-task lines from Python, on the pbeh logger only."""

from __future__ import annotations

import io
import logging

import pytest

import pbeh
from pbeh.data import synthetic_stream


def test_show_progress_prints_per_task_results_and_leaves_the_root_logger_alone(tmp_path):
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    out = io.StringIO()
    handler = pbeh.show_progress(stream=out)
    try:
        stream = synthetic_stream(n_tasks=2, items_per_class=10, seed=0)
        trainer = pbeh.ContinualTrainer.for_stream(
            stream,
            n_bits=8,
            hidden_dims=(8,),
            config=pbeh.TrainerConfig(epochs=1, select_on="last"),
            checkpoint_dir=tmp_path / "run",
        )
        trainer.fit(stream)
        logging.getLogger("faiss.loader").info("Could not load library with AVX512 support")
    finally:
        pbeh.show_progress(False)
    printed = out.getvalue()
    assert handler is not None
    assert printed.count("(T1)") >= 1
    assert printed.count("(T2)") >= 1
    assert "AVX512" not in printed
    assert ".partial" not in printed  # internal notes (saved files, prompt pools) only at level="DEBUG"
    assert "prompt pool" not in printed
    assert (list(root.handlers), root.level) == before
    assert handler not in logging.getLogger("pbeh").handlers
    quiet = io.StringIO()
    pbeh.show_progress(stream=quiet)
    pbeh.show_progress(False)
    trainer.summary()
    assert quiet.getvalue() == ""


def test_show_progress_checks_its_arguments():
    with pytest.raises(ValueError, match="level: expected one of DEBUG, INFO, WARNING, got 'LOUD'"):
        pbeh.show_progress(level="LOUD")
    with pytest.raises(TypeError, match="enabled: expected a bool"):
        pbeh.show_progress("yes")
