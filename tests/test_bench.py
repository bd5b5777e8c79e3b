"""The benchmark's --quick smoke run (tiny shape) completes and prints the ratio table."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_runs():
    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_normalizers.py"), "--quick"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "| cpu (16, 16, 16) | softmax (torch) |" in result.stdout
    for name in ("entmax_alpha, learned alpha", "entmax15", "sparsemax", "rela_weights"):
        assert name in result.stdout
