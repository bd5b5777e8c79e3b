"""bench_convergence: the curve arithmetic by hand, and its --quick smoke run writes its table, JSON and plot."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("bench_convergence", ROOT / "bench" / "bench_convergence.py")
bench = importlib.util.module_from_spec(SPEC)
sys.modules["bench_convergence"] = bench  # dataclasses resolve their module by name
SPEC.loader.exec_module(bench)


def test_updates_to_reach_interpolates_between_validations():
    curve = [(50, 6.0), (100, 4.0), (150, 3.0)]
    assert bench.updates_to_reach(curve, 5.0) == 75.0
    assert bench.updates_to_reach(curve, 3.0) == 150.0
    assert bench.updates_to_reach(curve, 7.0) == 50.0
    assert math.isinf(bench.updates_to_reach(curve, 2.9))


def test_smooth_is_a_trailing_mean():
    assert bench.smooth([(1, 3.0), (2, 6.0), (3, 0.0), (4, 3.0)], window=3) == [
        (1, 3.0), (2, 4.5), (3, 3.0), (4, 3.0)]


def test_model_parse():
    assert bench.Model.parse("rela lr=transformer_rela --lr 1e-3") == bench.Model(
        "rela lr", "transformer_rela", ("--lr", "1e-3"))
    assert bench.Model.parse("transformer") == bench.Model("transformer", "transformer")


def test_summary_compares_each_seed_with_the_baselines_same_seed():
    runs = [bench.Run("t", "transformer", 1, [(10, 5.0), (20, 4.0)], bleu=50.0),
            bench.Run("t", "transformer", 2, [(10, 5.0), (20, 2.0)], bleu=60.0),
            bench.Run("t", "x", 1, [(10, 4.0), (20, 3.0)], bleu=52.0),
            bench.Run("t", "x", 2, [(10, 6.0), (20, 5.0)], bleu=40.0)]
    args = type("Args", (), {"updates": 20})()
    summary = bench.summarise(runs, [bench.Model("transformer", "transformer"), bench.Model("x", "x")], ["t"], args)
    x = summary["t"]["x"]
    # smoothed finals: transformer 4.5 (seed 1), 3.5 (seed 2); x reaches 4.5 at update 10 (seed 1), never (seed 2)
    assert x["bleu_diff"] == pytest.approx((2.0 - 20.0) / 2) and x["update_ratio"] == math.inf
    assert summary["t"]["transformer"]["update_ratio"] == 1.0


def test_quick_run_writes_results(tmp_path):
    out = tmp_path / "conv"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_convergence.py"), "--quick", "--out-dir",
                             str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = out.with_name(out.name + "_quick")
    data = json.loads((folder / "results.json").read_text())
    assert set(data["summary"]["svo"]) == {"transformer", "transformer_entmax", "transformer_rela"}
    assert all(len(run["curve"]) == 3 and run["bleu"] >= 0 for run in data["runs"])
    assert "| transformer_rela |" in (folder / "results.md").read_text()
    png = (folder / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
