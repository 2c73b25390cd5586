"""The README's example script runs as documented."""

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[1] / "examples" / "custom_modules.py"


def test_custom_modules_example_runs_and_prints_metrics():
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--epochs", "2"], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "student accuracy" in proc.stdout and "agreement with teacher" in proc.stdout
    accuracy = float(proc.stdout.split("student accuracy ")[1].split(",")[0])
    assert accuracy > 0.5  # far above chance (0.1) after two epochs
