"""The one training loop runs unchanged under torchrun (2 CPU processes, gloo backend)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fit.py"


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed next to this Python")
def test_two_process_run_agrees_across_ranks_and_writes_one_checkpoint(tmp_path: Path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = _free_port()
    proc = subprocess.run([torchrun, "--nproc_per_node=2", f"--master_port={port}", str(SCRIPT), str(tmp_path)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    h0 = json.loads((tmp_path / "rank0.json").read_text())
    h1 = json.loads((tmp_path / "rank1.json").read_text())
    assert h0["world"] == h1["world"] == 2  # really two processes, not two copies of one
    assert len(h0["history"]) == 2
    assert h0["history"] == h1["history"]  # metrics are reduced across ranks: every rank reports the same
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "best.safetensors", "last.safetensors", "metrics.jsonl"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
