"""The benchmark suite keeps working: every benchmark in benchmarks/ runs once (with
pytest-benchmark's timing disabled), so a change that breaks one — a hang, a stand-in
that no longer matches the code it replaces — fails here, not on a user's
`pytest --benchmark-only`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_every_benchmark_runs_once() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "benchmarks", "--benchmark-disable",
         "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
