"""Fuzzing every pbeh reader with damaged files: only pbeh's documented exceptions may come out.

The contract (docs/formats.md, "Errors"): a damaged, truncated or hostile file makes a reader raise
:class:`pbeh.serialization.FormatError` (a ValueError), or -- when the damage does not touch what the reader uses --
load the same content. Anything else (TypeError, KeyError, IndexError, MemoryError, OverflowError, a crash, or a
binary file whose content changed and loaded silently) is a bug.

Each target is one file of a valid seed artifact (built once) and the reader that loads it. A mutation is a short
list of ``(kind, position, value)`` integer triples, applied by :func:`mutate`: byte-level damage (bit flips,
interesting bytes and integers, truncation, insertion, deletion, duplication) and, for JSON and safetensors headers,
structural damage (a value replaced by one of another type or size, a key removed) with the safetensors checksum
recomputed so that the checks behind it are exercised too. Hypothesis draws the mutations here (a few seconds in
CI); ``bench/fuzz.py`` runs the same targets and mutations on 50,000+ inputs in crash-isolated worker processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# ------------------------------------------------------------------------------------------------ seeds


@dataclass(frozen=True)
class Target:
    """One fuzzed file: ``file`` (relative to the seed directory) and ``load(seed_dir) -> fingerprint``."""

    name: str
    file: str
    load: Callable[[Path], Any]
    kind: str  # "binary" (safetensors), "json", "mat", "npz"


def _fingerprint(*arrays: Any) -> str:
    digest = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        digest.update(str((arr.dtype.str, arr.shape)).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _load_index(d: Path) -> str:
    from pbeh.index import TruncatedHammingIndex

    TruncatedHammingIndex.metadata(d / "index.safetensors")
    index = TruncatedHammingIndex.load(d / "index.safetensors")
    parts = []
    for n_bits, _ in index.segments:
        ids = index.get_ids(n_bits=n_bits)
        parts += [ids, index.get_codes(ids).packed]
    return _fingerprint(*parts)


def _load_features(d: Path) -> str:
    from pbeh.encoders import load_features

    feats, ids, _ = load_features(d / "features.safetensors")
    return _fingerprint(feats, ids)


def _load_model(d: Path) -> str:
    import torch

    from pbeh.model import CrossModalHashModel

    model = CrossModalHashModel.from_pretrained(d / "model")
    return _fingerprint(*[t.detach().numpy() for t in model.state_dict().values() if t.dtype != torch.bool])


def _load_trainer(d: Path) -> str:
    from pbeh.trainer import ContinualTrainer

    trainer = ContinualTrainer.load(d / "run" / "task_000")
    return _fingerprint(trainer.image_index.get_codes(trainer._stored[0].ids).packed)


def _load_run(d: Path) -> str:
    from pbeh.trainer import ContinualTrainer

    return str(ContinualTrainer.load(d / "run").n_tasks_done)


def _load_matrix(d: Path) -> str:
    from pbeh.metrics import ContinualMatrix

    m = ContinualMatrix.load_json(d / "matrix.json")
    return _fingerprint(*[m.matrix(x) for x in m.directions])


def _load_train_test_mat(name: str) -> Callable[[Path], str]:
    def load(d: Path) -> str:
        from pbeh.data import read_train_test_mat

        data = read_train_test_mat(d / name, index_base=1)
        return _fingerprint(data.image, data.text, data.labels)

    return load


def _load_all_mat(d: Path) -> str:
    from pbeh.data import read_all_mat

    data = read_all_mat(d / "all_v73.mat")
    return _fingerprint(data.image, data.text, data.labels)


def _load_npz(d: Path) -> str:
    from pbeh.data import read_features_npz

    data = read_features_npz(d / "features.npz")
    return _fingerprint(data.image, data.text, data.labels, data.ids)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("index", "index.safetensors", _load_index, "binary"),
        Target("features", "features.safetensors", _load_features, "binary"),
        Target("model_weights", "model/model.safetensors", _load_model, "binary"),
        Target("model_config", "model/config.json", _load_model, "json"),
        Target("trainer_json", "run/task_000/trainer.json", _load_trainer, "json"),
        Target("trainer_state", "run/task_000/trainer_state.safetensors", _load_trainer, "binary"),
        Target("latest_json", "run/latest.json", _load_run, "json"),
        Target("matrix_json", "matrix.json", _load_matrix, "json"),
        Target("mat_v5", "wiki.mat", _load_train_test_mat("wiki.mat"), "mat"),
        Target("mat_v5_compressed", "wiki_z.mat", _load_train_test_mat("wiki_z.mat"), "mat"),
        Target("mat_v73", "all_v73.mat", _load_all_mat, "mat"),
        Target("npz", "features.npz", _load_npz, "npz"),
    )
}


def build_seeds(directory: Path) -> Path:
    """Write one valid artifact per target into ``directory`` (about a second)."""
    import h5py
    import scipy.io
    import torch

    from pbeh.codes import Codes
    from pbeh.data import synthetic_stream
    from pbeh.encoders import save_features
    from pbeh.extension import FixedSchedule
    from pbeh.index import TruncatedHammingIndex
    from pbeh.trainer import ContinualTrainer, TrainerConfig

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    index = TruncatedHammingIndex()
    index.add(Codes.from_bool(rng.random((6, 12)) > 0.5))
    index.add(Codes.from_bool(rng.random((4, 20)) > 0.5))
    index.save(directory / "index.safetensors")
    save_features(
        directory / "features.safetensors",
        rng.normal(size=(5, 4)).astype(np.float32),
        np.arange(5),
        encoder_name="toy",
        modality="text",
    )
    stream = synthetic_stream(n_tasks=2, classes_per_task=2, image_dim=8, text_dim=8, items_per_class=6, seed=0)
    trainer = ContinualTrainer.for_stream(
        stream,
        n_bits=8,
        hidden_dims=(8,),
        config=TrainerConfig(epochs=1, batch_size=16, eval_k=None, select_on="last", show_progress=False),
        extension_policy=FixedSchedule(bits_per_task=2),
        checkpoint_dir=directory / "run",
        pool_kwargs={"num_heads": 2},
    )
    trainer.fit_task(stream[0])
    trainer.model.save_pretrained(directory / "model")
    trainer.matrix.save_json(directory / "matrix.json")
    wiki = {
        "I_tr": rng.normal(size=(12, 5)),
        "T_tr": rng.normal(size=(12, 3)),
        "L_tr": rng.integers(1, 4, size=(12, 1)).astype(np.float64),
        "I_te": rng.normal(size=(4, 5)),
        "T_te": rng.normal(size=(4, 3)),
        "L_te": np.array([[1.0], [2.0], [3.0], [1.0]]),
    }
    scipy.io.savemat(directory / "wiki.mat", wiki)
    scipy.io.savemat(directory / "wiki_z.mat", wiki, do_compression=True)
    with h5py.File(directory / "all_v73.mat", "w") as fh:
        fh["XAll"] = rng.normal(size=(4, 10))  # stored transposed, as MATLAB does
        fh["YAll"] = rng.normal(size=(3, 10))
        fh["LAll"] = (rng.random((2, 10)) > 0.5).astype(np.float64)
    np.savez(
        directory / "features.npz",
        image=rng.normal(size=(6, 4)).astype(np.float32),
        text=rng.normal(size=(6, 3)).astype(np.float32),
        labels=np.eye(3, dtype=np.uint8)[[0, 1, 2, 0, 1, 2]],
        item_ids=np.arange(10, 16),
        label_names=np.array(["a", "b", "c"]),
    )
    return directory


# ------------------------------------------------------------------------------------------------ mutations
_BYTES = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0x20, 0x22, 0x5B, 0x7B, 0x2D, 0x39)
_INTS = (0, 1, 2, 7, 8, 9, 14, 15, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1)
_JSON_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 3, 2**31, 2**63, 10**30, -(10**9), 1e308, 0.5, float("nan"), "", "x", "task_000",
    "../x", "F32", "U8", [], [0], [1, 2], [10**9], [[1]], {}, {"a": 1}, "x" * 300, [-1, 5], [5, -1],
)  # fmt: skip
N_KINDS = 10


def _json_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:50]):
            out += _json_paths(v, (*prefix, i))
    return out


def _mutate_json_value(obj: Any, position: int, value: int) -> Any:
    paths = _json_paths(obj)
    path = paths[position % len(paths)]
    if not path:
        return _JSON_VALUES[value % len(_JSON_VALUES)]
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    action = value % 4
    if action == 0 and isinstance(parent, dict):
        del parent[key]
    elif action == 1:
        parent[key] = [parent[key]] * 2 if (value >> 2) % 2 else {"k": parent[key]}
    else:
        new = _JSON_VALUES[(value >> 2) % len(_JSON_VALUES)]
        if isinstance(parent[key], str) and (value >> 7) % 2 and not isinstance(new, str):
            new = json.dumps(new)  # metadata values are strings holding JSON: keep the type, change the content
        parent[key] = new
    return obj


def _split_safetensors(data: bytes) -> tuple[dict, bytes] | None:
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    try:
        return json.loads(data[8 : 8 + n]), data[8 + n :]
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _join_safetensors(header: Any, payload: bytes, *, rechecksum: bool) -> bytes:
    if rechecksum and isinstance(header, dict) and isinstance(header.get("__metadata__"), dict):
        from pbeh import serialization

        with contextlib.suppress(TypeError, ValueError, AttributeError):
            header["__metadata__"][serialization.CHECKSUM_KEY] = serialization._checksum(header, payload)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + payload


def mutate(data: bytes, ops: list[tuple[int, int, int]], file_kind: str) -> bytes:
    """Apply the mutations ``ops`` (``(kind, position, value)`` integer triples) to ``data``.

    Byte damage (``value % 7``): flip a bit, set an interesting byte, set an interesting 32- or 64-bit integer,
    truncate, insert, delete, duplicate. Structure damage, for ``kind >= 3`` on JSON files and ``kind >= 5`` on
    safetensors files: a value of the JSON (or of the safetensors header) is replaced by one of another type or size,
    wrapped, or removed; the safetensors checksum is then recomputed (kind 9 keeps it stale) so that the checks
    behind it are reached. Other kinds, and other files, get byte damage.
    """
    buf = bytearray(data)
    for kind, position, value in ops:
        kind %= N_KINDS
        if kind >= 3 and file_kind == "json":
            try:
                obj = json.loads(bytes(buf))
            except (ValueError, UnicodeDecodeError, RecursionError):
                kind = value % 7
            else:
                obj = _mutate_json_value(obj, position, value)
                buf = bytearray(json.dumps(obj, indent=2).encode())
                continue
        if kind >= 5 and file_kind == "binary":
            parts = _split_safetensors(bytes(buf))
            if parts is not None:
                header, payload = parts
                header = _mutate_json_value(header, position, value)
                buf = bytearray(_join_safetensors(header, payload, rechecksum=kind != 9))
                continue
        kind = value % 7
        n = len(buf)
        if n == 0:
            buf += bytes([value % 256])
            continue
        # bias positions to the start of the file, where headers and tags live
        pos = position % n if position % 3 else position % min(n, 512)
        if kind == 0:
            buf[pos] ^= 1 << (value % 8)
        elif kind == 1:
            buf[pos] = _BYTES[value % len(_BYTES)]
        elif kind == 2:
            width = 8 if value % 2 else 4
            number = _INTS[(value >> 1) % len(_INTS)] % (1 << (8 * width))
            buf[pos : pos + width] = number.to_bytes(width, "little")
        elif kind == 3:
            del buf[pos:]
        elif kind == 4:
            buf[pos:pos] = bytes((value >> (8 * i)) % 256 for i in range(1 + value % 8))
        elif kind == 5:
            del buf[pos : pos + 1 + value % 64]
        elif kind == 6:
            chunk = buf[pos : pos + 1 + value % 64]
            buf[pos:pos] = chunk
    return bytes(buf)


# ------------------------------------------------------------------------------------------------ running


class Workspace:
    """A private copy of the seeds; :meth:`run` writes one mutated file, loads it, and restores the original."""

    def __init__(self, seeds: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pbeh-fuzz-"))
        shutil.copytree(seeds, self.root, dirs_exist_ok=True)
        self.originals = {name: (self.root / t.file).read_bytes() for name, t in TARGETS.items()}
        self.expected = {name: t.load(self.root) for name, t in TARGETS.items()}

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def run(self, target_name: str, ops: list[tuple[int, int, int]]) -> tuple[str, str]:
        """``(outcome, detail)``: outcome ``"ok"``, ``"format_error"``, ``"silent_change"`` (a binary file whose
        bytes changed loaded other content without an error, checksum not recomputed) or ``"other"``."""
        from pbeh.serialization import FormatError

        target = TARGETS[target_name]
        original = self.originals[target_name]
        mutated = mutate(original, ops, target.kind)
        path = self.root / target.file
        path.write_bytes(mutated)
        try:
            fingerprint = target.load(self.root)
        except FormatError as exc:
            return "format_error", str(exc)[:200]
        except Exception as exc:
            return "other", f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            path.write_bytes(original)
            for leftover in path.parent.glob(f".{path.name}*"):
                leftover.unlink()
        restamped = any(5 <= k % N_KINDS <= 8 for k, _, _ in ops)
        if fingerprint != self.expected[target_name] and target.kind == "binary" and not restamped:
            return "silent_change", "content changed without an error"
        return "ok", ""


# ------------------------------------------------------------------------------------------------ CI tests
_WORKSPACE: Workspace | None = None


def workspace() -> Workspace:
    global _WORKSPACE
    if _WORKSPACE is None:
        seeds = build_seeds(Path(tempfile.mkdtemp(prefix="pbeh-fuzz-seeds-")))
        _WORKSPACE = Workspace(seeds)
    return _WORKSPACE


OPS = st.lists(
    st.tuples(st.integers(0, N_KINDS - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    min_size=1,
    max_size=3,
)
# Small budgets: the whole file runs in a few seconds; bench/fuzz.py is the long run.
_EXAMPLES = int(os.environ.get("PBEH_FUZZ_EXAMPLES", "15"))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_undamaged_seeds_load(target):
    ws = workspace()
    assert ws.run(target, []) == ("ok", "")


@pytest.mark.parametrize("target", sorted(TARGETS))
@settings(max_examples=_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(ops=OPS)
def test_damaged_files_raise_only_format_error(target, ops):
    outcome, detail = workspace().run(target, ops)
    assert outcome in ("ok", "format_error"), f"{target} {ops}: {outcome}: {detail}"


def test_mutate_is_deterministic_and_changes_bytes():
    data = bytes(range(256)) * 4
    ops = [(0, 5, 3), (4, 900, 77), (3, 1000, 0)]
    assert mutate(data, ops, "mat") == mutate(data, ops, "mat")
    assert mutate(data, ops, "mat") != data
    header = {"__metadata__": {"pbeh_kind": "index"}, "t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
    seed = _join_safetensors(header, b"\x01", rechecksum=True)
    assert _split_safetensors(mutate(seed, [(7, 3, 9)], "binary")) is not None
