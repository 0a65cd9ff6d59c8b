"""Tests of the command line (pbeh.cli.main, in-process): train, evaluate, search, describe, errors; and one
subprocess test of ``python -m pbeh --version``."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from pbeh import __version__
from pbeh.cli import main
from pbeh.data import synthetic_stream
from pbeh.index import TruncatedHammingIndex
from pbeh.metrics import ContinualMatrix
from pbeh.model import CrossModalHashModel
from pbeh.serialization import read_json

TRAIN = ["train", "--protocol", "synthetic", "--epochs", "2", "--hidden", "16", "--bits", "8", "--quiet"]
# The CLI sets torch's thread count (default 2); the tests keep one thread.
THREADS = ["--threads", "1"]


@pytest.fixture(autouse=True)
def _one_thread():
    yield
    torch.set_num_threads(1)


def summary_of(output: str) -> dict:
    (line,) = [line for line in output.splitlines() if line.startswith("summary: ")]
    return json.loads(line.removeprefix("summary: "))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One synthetic training run; returns (directory, its printed output)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            code = main([*TRAIN, *THREADS, "--out", str(out)])
    finally:
        torch.set_num_threads(1)
    assert code == 0
    return out, buffer.getvalue()


def test_train_prints_the_matrices_and_writes_the_run(run_dir):
    out, printed = run_dir
    assert "Synthetic stream: seeded random multi-label data, not a real benchmark" in printed
    assert synthetic_stream().describe() in printed
    matrix = ContinualMatrix.load_json(out / "matrix.json")
    assert matrix.n_tasks == 4
    assert matrix.format_table() in printed
    assert "i2t: R[t, i] after training task t" in printed
    assert "t2i: R[t, i] after training task t" in printed
    for t in range(4):
        assert f"task {t} T{t + 1}: 8 bits" in printed
    summary = summary_of(printed)
    assert summary["tasks"] == 4
    assert summary["final_bits"] == 8
    assert len(summary["bits_per_task"]) == 4
    assert summary["mean_i2t"] == pytest.approx(matrix.final_mean("i2t"))
    assert (out / "matrix.csv").read_text() == matrix.to_csv()
    latest = read_json(out / "latest.json")
    assert latest == {"directory": "task_003", "tasks_done": 4}
    state = read_json(out / "task_003" / "trainer.json")
    assert state["config"]["epochs"] == 2
    assert state["config"]["eval_k"] == 1000
    assert state["config"]["lr"] == 1e-3
    assert not state["config"]["show_progress"]


def test_train_again_resumes_and_no_resume_retrains(run_dir, tmp_path, capsys):
    out, printed = run_dir
    assert main([*TRAIN, *THREADS, "--out", str(out)]) == 0  # every task is in the checkpoint: nothing to train
    assert summary_of(capsys.readouterr().out) == summary_of(printed)
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    assert main([*TRAIN, *THREADS, "--out", str(copy), "--no-resume", "--seed", "3"]) == 0
    retrained = summary_of(capsys.readouterr().out)
    assert retrained != summary_of(printed)  # another seed, trained from scratch
    assert read_json(copy / "task_003" / "trainer.json")["config"]["seed"] == 3


def test_evaluate_prints_the_saved_run(run_dir, tmp_path, capsys):
    out, printed = run_dir
    assert main(["evaluate", str(out), "--csv", str(tmp_path / "m.csv")]) == 0
    shown = capsys.readouterr().out
    matrix = ContinualMatrix.load_json(out / "matrix.json")
    assert matrix.format_table() in shown
    task_lines = [line for line in printed.splitlines() if line.startswith("task ") and line[5].isdigit()]
    assert task_lines
    assert all(line in shown for line in task_lines)
    summary = summary_of(shown)
    assert summary["mean_i2t"] == pytest.approx(matrix.final_mean("i2t"))
    assert summary["bits_per_task"] == [8, 8, 8, 8]
    assert (tmp_path / "m.csv").read_text() == matrix.to_csv()
    # A state directory works as well as the run directory.
    assert main(["evaluate", str(out / "task_001")]) == 0
    assert "task 1 T2" in capsys.readouterr().out


def test_evaluate_refuses_a_directory_without_a_run(tmp_path):
    with pytest.raises(SystemExit, match="holds no pbeh run"):
        main(["evaluate", str(tmp_path)])


@pytest.mark.parametrize("modality", ["text", "image"])
def test_search_with_a_npy_of_features(run_dir, tmp_path, capsys, modality):
    out, _ = run_dir
    width = 32 if modality == "text" else 64
    features = np.random.default_rng(0).standard_normal((3, width)).astype(np.float32)
    path = tmp_path / "queries.npy"
    np.save(path, features)
    assert main(["search", str(out), "--modality", modality, "--features", str(path), "--k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["query 0", "query 1", "query 2"]
    # Brute-force reference: the saved model and the other modality's saved index.
    state = out / "task_003"
    model = CrossModalHashModel.from_pretrained(state / "model")
    other = "image" if modality == "text" else "text"
    index = TruncatedHammingIndex.load(state / f"{other}_index.safetensors")
    expected = index.search(model.encode(features, modality), 5)
    for q, line in enumerate(lines):
        pairs = line.split(": ", 1)[1].split(", ")
        assert [int(p.split(" ")[0]) for p in pairs] == expected.ids[q].tolist()
        assert [float(p.split("(")[1].rstrip(")")) for p in pairs] == pytest.approx(expected.scores[q], abs=5e-4)
    # One feature vector (1-D) is one query.
    np.save(path, features[0])
    assert main(["search", str(out), "--modality", modality, "--features", str(path), "--k", "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [lines[0].split(", ")[0] + ", " + lines[0].split(", ")[1]]


def test_search_refuses_features_of_the_wrong_width(run_dir, tmp_path):
    out, _ = run_dir
    path = tmp_path / "queries.npy"
    np.save(path, np.zeros((2, 7), dtype=np.float32))
    with pytest.raises(ValueError, match=r"features: expected shape \(batch, 32\) for text features, got \(2, 7\)"):
        main(["search", str(out), "--modality", "text", "--features", str(path)])


def test_describe(capsys):
    assert main(["describe", "--protocol", "synthetic"]) == 0
    assert capsys.readouterr().out.strip() == synthetic_stream().describe()


def test_describe_wikipedia5(shared_data, capsys):
    assert main(["describe", "--protocol", "wikipedia5", "--data-dir", str(shared_data)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("wikipedia5: 5 tasks, 10 classes")


@pytest.mark.parametrize("command", ["describe", "train"])
def test_bad_protocol_is_a_clear_error(tmp_path, command, capsys):
    args = [command, "--protocol", "flickr-9000"]
    if command == "train":
        args += ["--out", str(tmp_path / "run"), *THREADS, "--quiet"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert re.search(
        r"--protocol: expected one of synthetic, wikipedia5, mirflickr730-4.*got 'flickr-9000'", capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--protocol", "synthetic"],  # --out is required
        ["train", "--out", "x", "--select-on", "best"],
        ["train", "--out", "x", "--method", "pbeh-v2"],
        ["search", "run", "--modality", "audio", "--features", "q.npy"],
        [],
    ],
)
def test_argument_errors_exit_with_usage(args, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(args)
    assert excinfo.value.code == 2
    assert "usage: pbeh" in capsys.readouterr().err


def test_joint_method_run_can_be_evaluated_and_searched(tmp_path, capsys):
    out = tmp_path / "joint"
    assert main([*TRAIN, *THREADS, "--out", str(out), "--method", "joint", "--eval-k", "0"]) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["tasks"] == 1
    assert summary["bits_per_task"] == [8]
    assert read_json(out / "latest.json")["directory"] == "joint"
    assert read_json(out / "joint" / "trainer.json")["config"]["eval_k"] is None  # --eval-k 0: mAP@all
    assert main(["evaluate", str(out)]) == 0
    assert "evaluation of T1, T2, T3, T4" in capsys.readouterr().out
    path = tmp_path / "q.npy"
    np.save(path, np.ones((1, 64), dtype=np.float32))
    assert main(["search", str(out), "--modality", "image", "--features", str(path), "--k", "3"]) == 0
    assert capsys.readouterr().out.startswith("query 0: ")


def test_python_m_pbeh_version():
    result = subprocess.run(
        [sys.executable, "-m", "pbeh", "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pbeh {__version__}"


def test_file_protocols_need_and_take_n_tasks(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.eye(4, dtype=np.uint8)[np.arange(40) % 4]
    path = tmp_path / "features.npz"
    np.savez(
        path,
        image=rng.standard_normal((40, 6)).astype(np.float32),
        text=rng.standard_normal((40, 5)).astype(np.float32),
        labels=labels,
    )
    with pytest.raises(SystemExit, match="needs --n-tasks"):
        main(["describe", "--protocol", "npz", "--data-dir", str(path)])
    assert main(["describe", "--protocol", "npz", "--data-dir", str(path), "--n-tasks", "2"]) == 0
    out = capsys.readouterr().out
    assert "T1" in out
    assert "T2" in out
