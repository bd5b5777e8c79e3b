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
    sys.path.insert(0, ROOT)
    from sparse_attn_fairseq.kernels import kernels_for
    from sparse_attn_fairseq.layers.normalizers import normalizer_names

    for normalizer in normalizer_names():  # every (normalizer, kernel) pair of the registries has a row
        for kernel in kernels_for(normalizer):
            assert f"| {normalizer} [{kernel.name}] |" in result.stdout


def test_self_attention_over_8192_tokens_for_every_normalizer():
    """8192 x 8192 attention, forward and backward, each normaliser in its own process: finite, within 4 GiB."""
    import re

    cmd = [sys.executable, os.path.join(ROOT, "bench", "bench_long_inputs.py"), "--length", "8192", "--heads", "1",
           "--dim", "16"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"\| (\w+) \| [\d.]+ s \| (\d+) MiB \| ([\d.e+-]+) \| True \|", result.stdout)
    sys.path.insert(0, ROOT)
    from sparse_attn_fairseq.layers.normalizers import normalizer_names

    assert sorted(name for name, _, _ in rows) == sorted(normalizer_names()), result.stdout
    assert all(int(peak) < 4096 for _, peak, _ in rows)
    assert all(float(error) < 1e-5 for name, _, error in rows if name != "rela")  # rows sum to one


def test_gpu_check_dry_run_lists_both_tiers():
    cmd = [sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--dry-run"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    steps = [line.split(":")[0] for line in result.stdout.splitlines()]
    assert steps == ["kernels/correctness", "kernels/flex", "kernels/sync", "kernels/speed", "models/tests",
                     "models/train"], result.stdout


_WITHOUT_FAIRSEQ = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "fairseq" or name.startswith("fairseq."):
            raise ImportError("fairseq is not installed here (hidden by the test)")
sys.meta_path.insert(0, Block())
sys.argv = [%r, "--smoke", "--tier", "kernels"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_gpu_check_kernel_tier_needs_no_fairseq():
    """The kernel tier's correctness and sync steps, tiny, under triton's interpreter, with fairseq unimportable:
    every Triton kernel passes against the oracles."""
    script = _WITHOUT_FAIRSEQ % os.path.join(ROOT, "bench", "gpu_check.py")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| kernels |")]
    assert len(rows) == 12 and all(line.endswith("| ok |") for line in rows), result.stdout
