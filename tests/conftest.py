"""Shared test configuration: deterministic single-threaded math, and the real-data location."""

from __future__ import annotations

import os
from pathlib import Path

# One thread everywhere: on a shared 2-core machine two OpenMP pools (torch + faiss) can stall badly.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

try:  # torch is a dependency, but keep the foundation tests importable without it
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

try:
    import faiss

    faiss.omp_set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: The real data lives beside the repository (../shared/data); PBEH_DATA overrides it.
SHARED_DATA = Path(os.environ.get("PBEH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test (with the reason) when the real data is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set PBEH_DATA)")
    return SHARED_DATA
