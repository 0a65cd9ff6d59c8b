"""Tests of the command line (pbeh.cli.main, in-process): train, evaluate, describe, search, plot; what it prints
(tasks numbered 1..T, each extension decision once, no temporary paths, readable tables or --json), its defaults
(TrainerConfig's), its error lines (one line, a resume hint, --debug for the traceback); and one subprocess test."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from pbeh import __version__
from pbeh.cli import _parser, main
from pbeh.data import synthetic_stream
from pbeh.index import TruncatedHammingIndex
from pbeh.metrics import ContinualMatrix
from pbeh.model import CrossModalHashModel
from pbeh.serialization import read_json
from pbeh.trainer import ContinualTrainer, TrainerConfig

TRAIN = ["train", "--protocol", "synthetic", "--epochs", "2", "--hidden", "16", "--bits", "8"]


@pytest.fixture(autouse=True)
def _one_thread():
    yield
    torch.set_num_threads(1)
    logging.getLogger("pbeh").propagate = True  # the CLI detaches pbeh's logger from the root; restore for caplog


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One synthetic training run; returns (directory, stdout, stderr)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    mp = pytest.MonkeyPatch()
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main([*TRAIN, "--out", str(out)])
    finally:
        mp.undo()
        torch.set_num_threads(1)
        logging.getLogger("pbeh").propagate = True
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


# ------------------------------------------------------------------------------------------------------ train
def test_train_prints_tasks_numbered_from_1_and_writes_the_run(run_dir):
    out, printed, err = run_dir
    assert "Synthetic stream: seeded random multi-label data, not a real benchmark" in printed
    assert synthetic_stream().describe() in printed
    matrix = ContinualMatrix.load_json(out / "matrix.json")
    assert matrix.n_tasks == 4
    for t in range(1, 5):
        assert re.search(rf"^task {t}/4 T{t}: 8 bits", printed, re.M)
    assert "after task    1 T1" in printed or re.search(r"^after task\s+1 T1\s+2 T2", printed, re.M)
    assert not re.search(r"\btask 0\b|after t\b|i=0", printed + err)
    assert (out / "matrix.csv").read_text() == matrix.to_csv()
    assert read_json(out / "latest.json") == {"directory": "task_003", "tasks_done": 4}
    info = read_json(out / "run.json")
    assert info["task_names"] == ["T1", "T2", "T3", "T4"]
    assert info["label_names"][0] == "class_0"


def test_train_prints_each_extension_decision_once_and_no_temporary_paths(run_dir):
    _, printed, err = run_dir
    for t in range(1, 5):
        assert len(re.findall(rf"extension after task {t}: (keep|extend) ", printed + err)) == 1
    assert printed.count("no modality above threshold") + printed.count("above threshold") >= 4
    assert "ModeCenterRule" not in printed + err
    assert ".partial" not in printed + err
    assert "AVX" not in err


def test_loss_weight_options_reach_the_trainer(tmp_path):
    out = tmp_path / "run"
    argv = [*TRAIN, "--quiet", "--out", str(out), "--class-centers", "0", "--stored-codes", "5"]
    assert main(argv) == 0
    weights = read_json(out / "latest.json")
    state = read_json(out / weights["directory"] / "trainer.json")["loss_weights"]
    assert state["class_centers"] == 0.0
    assert state["stored_codes"] == 5.0
    assert state["contrastive"] == 10.0  # the rest stays the method's


def test_prior_targets_option_reaches_the_trainer(tmp_path):
    out = tmp_path / "run"
    assert main([*TRAIN, "--quiet", "--out", str(out), "--prior-targets", "centers"]) == 0
    config = read_json(out / read_json(out / "latest.json")["directory"] / "trainer.json")["config"]
    assert config["prior_targets"] == "centers"
    with pytest.raises(SystemExit):
        main([*TRAIN, "--quiet", "--out", str(tmp_path / "bad"), "--prior-targets", "means"])


def _top_rows(printed):
    """The per-task rows of the printed 'top of the one index' table: {task name: [8 floats]}."""
    block = printed.split("the top of the one index, per query task", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines()[2:]:
        _, name, *cells = line.split()
        rows[name] = [float(c) for c in cells]
    return rows


def test_the_summary_shows_the_top_of_the_index_per_task(run_dir, capsys):
    out, printed, _ = run_dir
    rows = _top_rows(printed)
    assert list(rows) == ["T1", "T2", "T3", "T4"]
    trainer = read_json(out / "task_003" / "trainer.json")
    unified = trainer["reports"][-1]["unified"]
    for t, name in enumerate(rows):
        expected = [
            unified[d][key][t]
            for key in (
                "per_task_p_at_10",
                "per_task_map_at_100",
                "per_task_newest_share",
                "per_task_newest_share_neutral",
            )
            for d in ("i2t", "t2i")
        ]
        assert rows[name] == pytest.approx(expected, abs=5e-5)  # printed with 4 decimals
    # the same table from the saved run
    assert main(["evaluate", str(out)]) == 0
    assert _top_rows(capsys.readouterr().out) == rows
    assert main(["describe", str(out)]) == 0
    assert _top_rows(capsys.readouterr().out) == rows


def test_a_summary_without_per_task_figures_has_no_top_table():
    from pbeh.cli._output import summary_table, top_of_index_table

    summary = {"tasks": 2, "mean_i2t": 0.5, "mean_t2i": 0.5}
    assert top_of_index_table(summary) is None
    assert "the top of the one index" not in summary_table(summary)
    summary["unified_i2t_p10_per_task"] = [0.25, 0.5]  # one figure known: the others print as "-"
    table = top_of_index_table(summary, ["a"])
    assert table.splitlines()[2].split() == ["1", "a", "0.2500", *["-"] * 7]
    assert table.splitlines()[3].split() == ["2", "0.5000", *["-"] * 7]


def test_extension_rule_option_reaches_the_trainer(tmp_path, capsys):
    out = tmp_path / "ties"
    args = [*TRAIN, "--quiet", "--out", str(out), "--extension-rule", "ties", "--rho", "0.0", "--delta", "3"]
    assert main(args) == 0
    policy = read_json(out / "task_003" / "trainer.json")["extension_policy"]
    assert policy["name"] == "ties"
    assert policy["rho"] == 0.0
    assert policy["delta"] == 3
    assert main([*TRAIN, "--quiet", "--out", str(tmp_path / "bad"), "--extension-rule", "collision", "--rho", "2"]) == 1
    assert "--extension-rule collision: rho: expected" in capsys.readouterr().err


def test_train_summary_is_a_table_and_json_on_request(run_dir, tmp_path, capsys):
    out, printed, _ = run_dir
    assert re.search(r"^summary after 4 task\(s\)", printed, re.M)
    for row in ("mean mAP over tasks (final)", "backward transfer (BWT)", "unified mAP (one index)", "prefix drift"):
        assert row in printed
    assert not re.search(r"\d\.\d{10,}", printed)  # no 16-digit floats
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    assert main([*TRAIN, "--out", str(copy), "--json"]) == 0  # resumes: every task is done, nothing trains
    summary = json.loads(capsys.readouterr().out)
    matrix = ContinualMatrix.load_json(out / "matrix.json")
    assert summary["tasks"] == 4
    assert summary["bits_per_task"] == [8, 8, 8, 8]
    assert summary["mean_i2t"] == pytest.approx(matrix.final_mean("i2t"))
    assert f"{summary['mean_i2t']:.4f}" in printed


def test_train_again_resumes_and_no_resume_retrains(run_dir, tmp_path, capsys):
    out, _, _ = run_dir
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    assert main([*TRAIN, "--out", str(copy)]) == 0
    shown = capsys.readouterr().out
    assert "resuming" in shown
    assert "4 of 4 task(s) already done" in shown
    assert main([*TRAIN, "--out", str(copy), "--no-resume", "--seed", "3", "--quiet"]) == 0
    assert read_json(copy / "task_003" / "trainer.json")["config"]["seed"] == 3
    # another method on the same --out is refused before anything trains, with the way out
    assert main([*TRAIN, "--out", str(copy), "--method", "finetune", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "holds a run with another method (method='pbeh')" in err
    assert "--no-resume" in err
    assert read_json(copy / "run.json")["method"] == "pbeh"
    # other training options on the same --out: refused with the differences, and no "rerun to resume" hint
    assert main([*TRAIN, "--out", str(copy), "--epochs", "7", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "epochs: checkpoint" in err
    assert "now 7" in err
    assert "rerun the same command to resume" not in err


# ------------------------------------------------------------------------------------------------------ defaults
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_train_defaults_are_the_library_defaults():
    args = _parser().parse_args(["train", "--out", "x"])
    config = TrainerConfig()
    assert args.epochs == config.epochs
    assert args.batch_size == config.batch_size
    assert args.lr == config.lr
    assert args.samples_per_prompt == config.samples_per_prompt
    assert args.eval_every == config.eval_every
    assert args.select_on == config.select_on
    assert args.seed == config.seed
    assert args.eval_k == (config.eval_k or 0)
    import inspect

    for_stream = inspect.signature(ContinualTrainer.for_stream).parameters
    assert tuple(args.hidden) == tuple(for_stream["hidden_dims"].default)
    assert args.bits == for_stream["n_bits"].default
    assert args.threads == 1
    if hasattr(config, "prototype_replay"):
        assert args.prototype_replay == config.prototype_replay
    assert args.prototype_clusters == config.prototype_clusters
    from pbeh.baselines import METHODS

    (method,) = [a for a in _subparsers(_parser())["train"]._actions if a.dest == "method"]
    assert tuple(method.choices) == tuple(METHODS)


def test_cli_follows_a_changed_trainer_default(monkeypatch):
    fields = {f.name: f for f in dataclasses.fields(TrainerConfig)}
    monkeypatch.setattr(fields["epochs"], "default", 7)
    assert _parser().parse_args(["train", "--out", "x"]).epochs == 7


def test_every_option_has_help_and_threads_explains_itself():
    parser = _parser()
    for name, sub in _subparsers(parser).items():
        for action in sub._actions:
            assert action.help, f"pbeh {name} {action.option_strings or action.dest} has no help"
        help_text = " ".join(sub.format_help().split())
        if name in ("train", "search"):
            assert "OpenMP" in help_text
            assert "7-10x slower" in help_text
    train_help = _subparsers(parser)["train"].format_help()
    for option in ("--batch-size", "--lr", "--select-on", "--seed", "--samples-per-prompt", "--eval-every", "--rho"):
        assert option in train_help


def test_the_cli_configures_only_the_pbeh_logger(tmp_path, capsys):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    assert main(["describe", "--protocol", "synthetic"]) == 0
    assert root.handlers == handlers
    assert root.level == level
    logging.getLogger("faiss.loader").info("Could not load library with AVX512 support")
    logging.getLogger("pbeh.training.trainer").info("an info line the CLI does not show")
    err = capsys.readouterr().err
    assert "AVX512" not in err
    assert "an info line" not in err


# ------------------------------------------------------------------------------------------------------ errors
def test_a_runtime_error_is_one_line_with_the_resume_hint(tmp_path, capsys, monkeypatch):
    def boom(self, task):
        raise RuntimeError("out of memory on task\nsecond line")

    monkeypatch.setattr(ContinualTrainer, "fit_task", boom)
    assert main([*TRAIN, "--quiet", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "pbeh train: error: RuntimeError: out of memory on task (rerun the same command to resume from the last "
        "completed task; --debug shows the traceback)"
    )
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["--debug", *TRAIN, "--quiet", "--out", str(tmp_path / "run")])
    with pytest.raises(RuntimeError, match="out of memory"):
        main([*TRAIN, "--debug", "--quiet", "--out", str(tmp_path / "run")])


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupt(self, task):
        raise KeyboardInterrupt

    monkeypatch.setattr(ContinualTrainer, "fit_task", interrupt)
    assert main([*TRAIN, "--quiet", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip() == (
        "pbeh: interrupted; rerun the same command to resume from the last completed task"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["describe", "--protocol", "flickr-9000"], r"--protocol: expected one of synthetic, .*got 'flickr-9000'"),
        (["describe", "--protocol", "npz", "--data-dir", "x.npz"], r"--protocol npz needs --n-tasks"),
        (["describe", "--protocol", "npz", "--n-tasks", "2"], r"--protocol npz needs --data-dir"),
        (["evaluate", "{tmp}"], r"holds no pbeh run"),
        (["describe", "{tmp}/missing"], r"run: expected a run directory written by 'pbeh train'"),
        ([*TRAIN, "--out", "{tmp}/r", "--epochs", "0"], r"training options: epochs: expected a positive int, got 0"),
        ([*TRAIN, "--out", "{tmp}/r", "--threads", "0"], r"--threads: expected a positive number of threads, got 0"),
        (
            [*TRAIN, "--out", "{tmp}/r", "--class-centers", "-1"],
            r"class_centers: expected a finite weight >= 0, got -1",
        ),
    ],
)
def test_user_errors_are_one_clear_line(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert "rerun" not in err


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


# ------------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_shows_the_matrices_unified_score_and_drift(run_dir, tmp_path, capsys):
    out, _, _ = run_dir
    assert main(["evaluate", str(out), "--csv", str(tmp_path / "m.csv")]) == 0
    shown = capsys.readouterr().out
    matrix = ContinualMatrix.load_json(out / "matrix.json")
    state = read_json(out / "task_003" / "trainer.json")
    last = state["reports"][-1]
    assert f"unified mAP (one index)            {last['unified_i2t']:.4f}" in shown
    assert f"{last['prefix_drift']:.4f}" in shown
    assert "prefix drift (stored bits now flipped)" in shown
    for t in range(1, 5):
        assert re.search(rf"^task {t}/4 T{t}: 8 bits", shown, re.M)
    assert (tmp_path / "m.csv").read_text() == matrix.to_csv()
    assert main(["evaluate", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unified_i2t"] == pytest.approx(last["unified_i2t"])
    assert summary["prefix_drift"] == pytest.approx(last["prefix_drift"])
    assert summary["bits_per_task"] == [8, 8, 8, 8]
    # the newest task's checkpoint works as well as the run directory; earlier task states are not kept by default
    assert sorted(p.name for p in out.glob("task_*")) == ["task_003"]
    assert main(["evaluate", str(out / "task_003")]) == 0
    assert "summary after 4 task(s)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------ describe
def test_describe_a_run(run_dir, capsys):
    out, _, _ = run_dir
    assert main(["describe", str(out)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"run {out} (newest state: task_003)")
    assert "protocol synthetic, method pbeh, 4 task(s) in the stream, 4 done" in shown
    assert "epochs=2" in shown
    assert re.search(r"^\s+4\s+T4\s+8\s", shown, re.M)
    assert "stored: 576 item(s) per modality in 4 task segment(s)" in shown
    assert "summary after 4 task(s)" in shown
    assert main(["describe", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["epochs"] == 2
    assert [s["name"] for s in data["stored"]] == ["T1", "T2", "T3", "T4"]
    assert data["bytes_on_disk"] > 0


def test_describe_a_stream(capsys):
    assert main(["describe", "--protocol", "synthetic"]) == 0
    assert capsys.readouterr().out.strip() == synthetic_stream().describe()
    assert main(["describe", "--protocol", "synthetic", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [t["task"] for t in data["tasks"]] == [1, 2, 3, 4]


def test_describe_wikipedia5(shared_data, capsys):
    assert main(["describe", "--protocol", "wikipedia5", "--data-dir", str(shared_data)]) == 0
    assert capsys.readouterr().out.startswith("wikipedia5: 5 tasks, 10 classes")


# ------------------------------------------------------------------------------------------------------ search
@pytest.mark.parametrize("modality", ["text", "image"])
def test_search_prints_id_score_task_labels_and_json(run_dir, tmp_path, capsys, modality):
    out, _, _ = run_dir
    width = 32 if modality == "text" else 64
    features = np.random.default_rng(0).standard_normal((3, width)).astype(np.float32)
    path = tmp_path / "queries.npy"
    np.save(path, features)
    assert main(["search", str(out), "--modality", modality, "--features", str(path), "--k", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # Brute-force reference: the saved model and the other modality's saved index.
    state = out / "task_003"
    model = CrossModalHashModel.from_pretrained(state / "model")
    other = "image" if modality == "text" else "text"
    index = TruncatedHammingIndex.load(state / f"{other}_index.safetensors")
    codes = model.encode(features, modality, role="query")
    expected = index.search(codes, 5)
    everything = index.search(codes, len(index))  # the whole ranking: who else scores what rank 5 scores
    tied = [int((everything.scores[q, 5:] == expected.scores[q, -1]).sum()) for q in range(3)]
    stream = synthetic_stream()
    task_of = {int(i): t for t, task in enumerate(stream) for i in task.database.ids}
    labels_of = {
        int(i): np.flatnonzero(row).tolist()
        for task in stream
        for i, row in zip(task.database.ids, task.database.labels, strict=True)
    }
    assert result["searched"] == other
    assert len(result["queries"]) == 3
    assert [entry["tied_unlisted"] for entry in result["queries"]] == tied
    for q, entry in enumerate(result["queries"]):
        assert [h["id"] for h in entry["hits"]] == expected.ids[q].tolist()
        assert [h["score"] for h in entry["hits"]] == pytest.approx(expected.scores[q].tolist())
        for hit in entry["hits"]:
            assert hit["task"] == task_of[hit["id"]] + 1
            assert hit["task_name"] == f"T{hit['task']}"
            assert hit["labels"] == labels_of[hit["id"]]
            assert hit["label_names"] == [f"class_{c}" for c in hit["labels"]]
    assert main(["search", str(out), "--modality", modality, "--features", str(path), "--k", "5"]) == 0
    shown = capsys.readouterr().out
    assert shown.count(f"({modality} → {other}):") == 3
    lines = [f"  and {n} more stored item{'s' * (n > 1)} with score" for n in tied if n]
    assert [line for line in shown.splitlines() if line.startswith("  and ")] == [
        line + f" {s:.3f}, as rank 5: among equal scores the list takes ascending ids"
        for line, s in zip(lines, [expected.scores[q, -1] for q in range(3) if tied[q]], strict=True)
    ]
    first = result["queries"][0]["hits"][0]
    row = rf"^\s+1\s+{first['id']}\s+{first['score']:.3f}\s+{first['task']} T{first['task']}\s+"
    assert re.search(row + re.escape(", ".join(first["label_names"])), shown, re.M)
    np.save(path, features[0])  # one feature vector (1-D) is one query
    assert main(["search", str(out), "--modality", modality, "--features", str(path), "--k", "2", "--json"]) == 0
    assert [h["id"] for h in json.loads(capsys.readouterr().out)["queries"][0]["hits"]] == expected.ids[0, :2].tolist()


def test_search_refuses_features_of_the_wrong_width(run_dir, tmp_path, capsys):
    out, _, _ = run_dir
    path = tmp_path / "queries.npy"
    np.save(path, np.zeros((2, 7), dtype=np.float32))
    assert main(["search", str(out), "--modality", "text", "--features", str(path)]) == 1
    assert (
        "--features: expected (n, 32) text features for this run's model, got shape (2, 7)" in capsys.readouterr().err
    )


# ------------------------------------------------------------------------------------------------------ plot
def test_plot_writes_the_figures(run_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, _, _ = run_dir
    assert main(["plot", str(out), "--out", str(tmp_path / "figs")]) == 0
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["bits.png", "matrices.png", "pr_curves.png", "unified_p10.png"]
    for name in names:
        assert (tmp_path / "figs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.count(".png") == 4


def test_plot_without_matplotlib_says_what_to_install(run_dir, capsys, monkeypatch):
    out, _, _ = run_dir
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(out)]) == 1
    assert 'needs matplotlib: pip install "pbeh[plot]"' in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ others
def test_joint_method_run_can_be_evaluated_and_searched(tmp_path, capsys):
    out = tmp_path / "joint"
    assert main([*TRAIN, "--quiet", "--out", str(out), "--method", "joint", "--eval-k", "0"]) == 0
    capsys.readouterr()
    assert read_json(out / "latest.json")["directory"] == "joint"
    assert read_json(out / "joint" / "trainer.json")["config"]["eval_k"] is None  # --eval-k 0: mAP@all
    assert main(["evaluate", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tasks"] == 1
    assert summary["bits_per_task"] == [8]
    path = tmp_path / "q.npy"
    np.save(path, np.ones((1, 64), dtype=np.float32))
    assert main(["search", str(out), "--modality", "image", "--features", str(path), "--k", "3"]) == 0
    assert capsys.readouterr().out.startswith("query 0 (image → text):")


def test_file_protocols_take_n_tasks_and_a_label_key(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "features.npz"
    np.savez(
        path,
        image=rng.standard_normal((40, 6)).astype(np.float32),
        text=rng.standard_normal((40, 5)).astype(np.float32),
        fine=np.arange(40) % 4,
    )
    assert (
        main(["describe", "--protocol", "npz", "--data-dir", str(tmp_path), "--n-tasks", "2", "--label-key", "fine"])
        == 0
    )
    shown = capsys.readouterr().out
    assert re.search(r"^T1 .*\n^T2 ", shown, re.M)


def test_python_m_pbeh_version():
    result = subprocess.run(
        [sys.executable, "-m", "pbeh", "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pbeh {__version__}"


def test_search_a_retriever_folder(tmp_path, capsys):
    import pbeh

    stream = synthetic_stream(n_tasks=2, items_per_class=15, seed=0)
    retriever = pbeh.Retriever.create(
        image_dim=stream.image_dim,
        text_dim=stream.text_dim,
        n_bits=8,
        hidden_dims=(8,),
        config=TrainerConfig(epochs=1, select_on="last"),
    )
    retriever.learn(stream)
    retriever.add(text_features=stream[1].database.text[:2], ids=[7001, 7002], metadata=[{"t": "a"}, {"t": "b"}])
    folder = tmp_path / "retriever"
    retriever.save(folder)
    queries = stream[1].query.image[:2]
    path = tmp_path / "q.npy"
    np.save(path, queries)
    assert main(["search", str(folder), "--modality", "image", "--features", str(path), "--k", "40", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = retriever.search(image_features=queries, k=40)
    codes = retriever.model.encode(queries, "image", role="query")
    everything = retriever.text_index.search(codes, len(retriever.text_index))
    for q, (entry, hits) in enumerate(zip(result["queries"], expected, strict=True)):
        full = len(hits) == 40
        assert entry["tied_unlisted"] == (int((everything.scores[q, 40:] == hits.scores[-1]).sum()) if full else 0)
        assert [h["id"] for h in entry["hits"]] == hits.ids.tolist()
        assert [h["task_name"] for h in entry["hits"]] == hits.tasks
        assert [h["metadata"] for h in entry["hits"]] == hits.metadata
    assert main(["search", str(folder), "--modality", "image", "--features", str(path), "--k", "3"]) == 0
    assert capsys.readouterr().out.startswith("query 0 (image → text):\nrank")
    # this folder has no encoder: a text query is one clear line
    assert main(["search", str(folder), "--text", "a dog"]) == 1
    assert "texts: this Retriever has no text encoder" in capsys.readouterr().err


def test_search_needs_exactly_one_kind_of_query(run_dir, tmp_path, capsys):
    out, _, _ = run_dir
    assert main(["search", str(out), "--k", "3"]) == 1
    assert "search: expected one of --features, --text, --image; got none" in capsys.readouterr().err
    assert main(["search", str(out), "--text", "a dog"]) == 1
    assert "is a run directory, which holds no encoder; search it with --features" in capsys.readouterr().err
    np.save(tmp_path / "q.npy", np.zeros((1, 32), dtype=np.float32))
    assert main(["search", str(out), "--features", str(tmp_path / "q.npy")]) == 1
    assert "--modality: say which modality" in capsys.readouterr().err


def test_search_names_what_is_wrong_with_the_features_file(run_dir, tmp_path, capsys):
    out, _, _ = run_dir
    junk, archive, objects, truncated = (tmp_path / n for n in ("junk.npy", "q.npz", "obj.npy", "cut.npy"))
    junk.write_bytes(b"not numpy at all")
    np.savez(archive, q=np.zeros((1, 32), dtype=np.float32))
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(truncated, np.zeros((4, 32), dtype=np.float32))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    expected = {
        junk: "is not a .npy file (no NumPy header); write it with numpy.save",
        archive: "is an .npz archive; save the query features alone with numpy.save",
        objects: "is not a readable .npy array (Object arrays cannot be loaded when allow_pickle=False)",
        truncated: "is not a readable .npy array",
    }
    for path, message in expected.items():
        assert main(["search", str(out), "--modality", "image", "--features", str(path)]) == 1
        err = capsys.readouterr().err
        assert f"--features: {str(path)!r} {message}" in err, err
        assert "Traceback" not in err
