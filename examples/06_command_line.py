"""The command line, run in-process: train a small synthetic run, describe it, search it, evaluate it, plot it.

Run:  OMP_NUM_THREADS=1 python examples/06_command_line.py

Each ``main([...])`` call is the same as typing ``pbeh ...`` in a shell. The run is small (2 epochs per task,
16-wide heads) so it takes seconds; leave the numbers out to get pbeh's defaults.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np

from pbeh.cli import main

with tempfile.TemporaryDirectory() as tmp:
    run = str(Path(tmp) / "run")
    small = ["--epochs", "2", "--hidden", "16", "--bits", "8"]
    assert main(["train", "--protocol", "synthetic", "--out", run, *small]) == 0
    assert main(["describe", run]) == 0

    queries = Path(tmp) / "queries.npy"
    np.save(queries, np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32))  # two 32-d text queries
    assert main(["search", run, "--modality", "text", "--features", str(queries), "--k", "3"]) == 0

    assert main(["evaluate", run, "--json"]) == 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert main(["plot", run]) == 0
    else:
        print('pbeh plot needs matplotlib: pip install "pbeh[plot]"')
    # A mistake gives one line, not a traceback (add --debug for the traceback):
    assert main(["search", run, "--modality", "text", "--features", str(Path(tmp) / "missing.npy")]) == 1
