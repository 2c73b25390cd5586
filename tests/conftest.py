"""Shared fixtures: a tiny digits split, a tiny run config, and a single-threaded torch.

The suite runs on small shared CPUs: one intra-op thread avoids thread contention, which
otherwise makes a 10-step MLP epoch take seconds instead of milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from distill.data.arrays import DataSplits
from distill.data.config import DataConfig
from distill.data.datasets import load_data


@pytest.fixture(autouse=True, scope="session")
def _no_progress_monitor_thread():
    """tqdm's monitor thread takes the bars' lock every few seconds; a test that forks this process
    (tests/test_faults.py) while it holds the lock would leave the child waiting on it forever."""
    from tqdm import tqdm

    previous, tqdm.monitor_interval = tqdm.monitor_interval, 0
    yield
    tqdm.monitor_interval = previous


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    """Digits (8×8, 10 classes) with 300 training examples; treat as read-only."""
    return load_data(DataConfig(name="digits", limit=300, seed=0))


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside tmp_path so default relative paths (runs/, cache/) land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def run_config(tmp_path: Path) -> dict[str, Any]:
    """A complete, tiny `distill run` config as a dict, writing only under tmp_path."""
    return {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "device": "cpu",
        "quiet": True,
        "data": {"name": "digits", "limit": 200},
        "teacher": {
            "arch": "cnn",
            "kwargs": {"widths": [4], "fc": 16},
            "signal": "cached",
            "cache_dir": str(tmp_path / "cache" / "teacher"),
            "train": {"epochs": 1, "batch_size": 64},
        },
        "student": {"arch": "mlp", "kwargs": {"hidden": [16]}},
        "train": {"epochs": 1, "batch_size": 64},
        "bench": {"repeats": 3, "throughput_batch": 16},
    }
