"""The quick start's demo recipe runs end to end (with a tiny update budget)."""

import re

from tests.conftest import REPO, run_cli


def test_demo_recipe_prints_bleu_signature_and_sparsity(tmp_path):
    result = run_cli("bash", REPO / "recipes" / "demo.sh",
                     env={"WORK": str(tmp_path), "ARCHS": "transformer_entmax", "MAX_UPDATE": "30"})
    summary = result.stdout.split("== demo results")[-1]
    assert re.search(r"BLEU\|nrefs:1\|.*version:[\d.]+", summary), result.stdout[-2000:]
    line = re.search(r"transformer_entmax\s+BLEU ([\d.]+)\s+(.*)", summary)
    assert line, summary
    for key in ("alpha_enc", "zeros_enc", "alpha_dec", "zeros_encdec"):
        assert re.search(rf"{key} [\d.]+", line.group(2)), line.group(2)
    analysis = result.stdout.split("== what every head learned")[-1]
    assert re.search(r"^transformer_entmax\s+[\d.]+\s+[\d.]+\s+\d+%\s+[\d.]+\s+1\.\d\d", analysis, re.M), analysis
    assert (tmp_path / "analysis" / "report.html").is_file() and (tmp_path / "analysis" / "alpha.png").is_file()
