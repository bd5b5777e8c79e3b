"""sparse-attn-analyze on real checkpoints: the JSON schema, AER well below random alignments, and bad input errors."""

import base64
import json
import random
import re
from html.parser import HTMLParser

import pytest

from sparse_attn_fairseq.analyze.alignment import aer, read_gold
from tests.conftest import USER_DIR, make_translation_data, run_cli, train_model
from tests.models.conftest import TINY_LM_TRAIN_FLAGS

HEAD_KEYS = {"zero_fraction", "mean_support", "relative_support", "null_rate"}


def _half_copy(checkpoint, path):
    """The checkpoint with its weights in float16, as fairseq-train --fp16 saves them."""
    import torch

    state = torch.load(checkpoint, weights_only=False)
    state["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def analysis(entmax_data, entmax_run, rela_run, transformer_checkpoint, tmp_path_factory):
    """One analysis of entmax, ReLA, stock transformer, adaptive span, and the entmax checkpoint in float16."""
    out = tmp_path_factory.mktemp("analysis")
    train_model("transformer_adaptive_span", entmax_data, out / "span", 10, "--adaptive-span-dynamic")
    entmax = entmax_run[0] / "checkpoint_last.pt"
    paths = [entmax, rela_run[0] / "checkpoint_last.pt", transformer_checkpoint, out / "span" / "checkpoint_last.pt",
             _half_copy(entmax, out / "entmax_fp16.pt")]
    result = run_cli("python", "-m", "sparse_attn_fairseq.analyze", entmax_data, *[a for p in paths for a in
                     ("--path", p)], "--out-dir", out, "--gold-alignments", entmax_data.parent / "raw" / "test.align",
                     "--cpu")
    return json.loads((out / "analysis.json").read_text()), out, result


def test_json_has_every_attention_type_layer_and_head(analysis):
    data, out, result = analysis
    assert data["schema"] == 1 and [m["arch"] for m in data["models"]] == [
        "transformer_entmax", "transformer_rela", "transformer", "transformer_adaptive_span", "transformer_entmax"]
    for model in data["models"]:
        assert list(model["attention"]) == ["encoder", "decoder", "encoder_decoder"] and model["sentences"] == 40
        for layers in model["attention"].values():
            for layer in layers:
                assert len(layer["heads"]) == 2 and 0 <= layer["js"] <= 1
                assert all(HEAD_KEYS <= set(head) for head in layer["heads"])
        for mode in ("normal", "shifted"):
            assert all(0 <= x["head_average"] <= 1 and len(x["heads"]) == 2 for x in model["aer"][mode])
    entmax, rela, stock, span, entmax_fp16 = data["models"]
    assert all("alpha" in head for layer in entmax["attention"]["encoder"] for head in layer["heads"])
    assert stock["attention"]["encoder"][0]["zero_fraction"] == 0.0  # softmax: dense
    assert any(layer["null_rate"] > 0 for layers in rela["attention"].values() for layer in layers)
    for layer in span["attention"]["encoder"] + span["attention"]["decoder"]:  # dynamic: a distribution over tokens
        for head in layer["heads"]:
            low, median, high = head["span_quantiles"]
            assert 0 <= low <= median <= high <= 1024 and low <= head["span"] <= high
    for layer, layer_fp16 in zip(entmax["attention"]["encoder_decoder"], entmax_fp16["attention"]["encoder_decoder"]):
        assert abs(layer["zero_fraction"] - layer_fp16["zero_fraction"]) < 0.02  # weights rounded to float16
        assert [h["alpha"] for h in layer["heads"]] == pytest.approx([h["alpha"] for h in layer_fp16["heads"]],
                                                                     abs=1e-3)
    assert "| encoder_decoder |" in (out / "report.md").read_text() and "wrote" in result.stdout
    assert "INFO" not in result.stderr  # the terminal shows progress bars, not fairseq's log


ALIGNED_MODEL = [
    "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
    "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads", "2",
    "--decoder-attention-heads", "2", "--share-all-embeddings", "--optimizer", "adam", "--lr", "3e-3",
    "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50", "--max-tokens", "2048", "--max-update", "300",
    "--seed", "1", "--cpu", "--num-workers", "0", "--no-epoch-checkpoints", "--disable-validation",
]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """transformer_entmax trained on 2000 demo pairs until its cross-attention aligns (about 40 s): (analysis.json,
    raw data folder)."""
    root = tmp_path_factory.mktemp("aligned")
    data_bin = make_translation_data(root, train=2000)
    run_cli("fairseq-train", data_bin, "--user-dir", USER_DIR, "--arch", "transformer_entmax", *ALIGNED_MODEL,
            "--save-dir", root / "ckpt")
    run_cli("python", "-m", "sparse_attn_fairseq.analyze", data_bin, "--path", root / "ckpt" / "checkpoint_last.pt",
            "--out-dir", root, "--gold-alignments", root / "raw" / "test.align", "--cpu")
    return json.loads((root / "analysis.json").read_text()), root / "raw"


def test_trained_cross_attention_aligns_well_below_random(aligned):
    data, raw = aligned
    golds = read_gold(raw / "test.align")
    rng = random.Random(0)
    sources, targets = (raw / "test.src").read_text().splitlines(), (raw / "test.tgt").read_text().splitlines()
    random_links = [{(rng.randrange(len(s.split())), j) for j in range(len(t.split()))}
                    for s, t in zip(sources, targets)]
    random_aer = aer(random_links, golds)
    best = min(layer["best_head_aer"] for layer in data["models"][0]["aer"]["normal"])
    assert random_aer > 0.8 and best < random_aer / 2, (best, random_aer)  # measured: 0.21 against 0.88


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_plots_are_pngs_and_the_html_page_embeds_them(analysis):
    _, out, _ = analysis
    names = {"alpha.png", "spans.png", "sparsity_js.png", "aer.png",
             *(f"attention_maps_{i}.png" for i in range(5))}
    assert names <= {p.name for p in out.glob("*.png")}
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, name
    page = (out / "report.html").read_text()
    parser = _Images()
    parser.feed(page)
    parser.close()
    assert len(parser.sources) == len(list(out.glob("*.png")))
    for source in parser.sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG")
    assert "<table>" in page and "JS" in page and "https://" not in page  # self-contained


def test_without_matplotlib_it_still_writes_json_and_says_how_to_get_plots(entmax_data, entmax_run, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from sparse_attn_fairseq.analyze.cli import main\n"
            f"sys.exit(main([{str(entmax_data)!r}, '--path', {str(entmax_run[0] / 'checkpoint_last.pt')!r}, "
            f"'--out-dir', {str(tmp_path)!r}, '--cpu']))")
    result = run_cli("python", "-c", code)
    assert "pip install 'sparse_attn_fairseq[plots]'" in result.stdout
    assert (tmp_path / "analysis.json").is_file() and not list(tmp_path.glob("*.png"))
    assert "matplotlib is not installed" in (tmp_path / "report.html").read_text()


def _analyze(data, *args):
    return run_cli("python", "-m", "sparse_attn_fairseq.analyze", data, *args, check=False)


def test_language_models_are_analysed_and_other_architectures_refused(entmax_data, tmp_path):
    raw = entmax_data.parent / "raw"
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.tgt", "--validpref", raw / "valid.tgt",
            "--testpref", raw / "test.tgt", "--destdir", tmp_path / "lm-bin", "--workers", "1")
    for arch in ("transformer_lm_rela", "transformer_lm"):
        run_cli("fairseq-train", tmp_path / "lm-bin", "--user-dir", USER_DIR, "--arch", arch, *TINY_LM_TRAIN_FLAGS,
                "--max-update", "2", "--save-dir", tmp_path / arch)
    result = _analyze(tmp_path / "lm-bin", *[a for arch in ("transformer_lm_rela", "transformer_lm")
                                              for a in ("--path", tmp_path / arch / "checkpoint_last.pt")],
                      "--out-dir", tmp_path / "out", "--cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    models = json.loads((tmp_path / "out" / "analysis.json").read_text())["models"]
    assert [m["arch"] for m in models] == ["transformer_lm_rela", "transformer_lm"]
    assert all(list(m["attention"]) == ["decoder"] and m["sentences"] == 40 for m in models)
    assert models[0]["attention"]["decoder"][0]["zero_fraction"] > 0 == models[1]["attention"]["decoder"][0][
        "zero_fraction"]
    refused = _analyze(tmp_path / "lm-bin", "--path", tmp_path / "transformer_lm" / "checkpoint_last.pt",
                       "--out-dir", tmp_path / "out", "--gold-alignments", raw / "test.align")
    assert refused.returncode == 2 and "--gold-alignments needs a translation model" in refused.stderr
    run_cli("fairseq-train", entmax_data, "--arch", "lstm", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
            "--encoder-hidden-size", "16", "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16",
            "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "512", "--max-update", "1", "--cpu",
            "--save-dir", tmp_path / "lstm", "--num-workers", "0")
    result = _analyze(entmax_data, "--path", tmp_path / "lstm" / "checkpoint_last.pt", "--out-dir", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(r"checkpoint_last.pt: LSTMModel has no Transformer attention layers", result.stderr), result.stderr


def test_bad_input_names_the_file_without_a_traceback(entmax_data, entmax_run, tmp_path):
    checkpoint = entmax_run[0] / "checkpoint_last.pt"
    cases = []
    missing = _analyze(entmax_data, "--path", tmp_path / "none.pt", "--out-dir", tmp_path)
    cases.append((missing, "none.pt: no such checkpoint"))
    (tmp_path / "truncated.pt").write_bytes(checkpoint.read_bytes()[:1000])
    cases.append((_analyze(entmax_data, "--path", tmp_path / "truncated.pt", "--out-dir", tmp_path),
                  "truncated.pt: cannot be loaded"))
    bad_gold = tmp_path / "gold.align"
    bad_gold.write_text("0-0\n" * 3)
    cases.append((_analyze(entmax_data, "--path", checkpoint, "--out-dir", tmp_path, "--gold-alignments", bad_gold),
                  "gold.align: 3 lines for 40 sentences"))
    lines = (entmax_data.parent / "raw" / "test.align").read_text().splitlines()
    lines[4] = "0-0 99-1"
    bad_gold.write_text("\n".join(lines) + "\n")
    cases.append((_analyze(entmax_data, "--path", checkpoint, "--out-dir", tmp_path, "--gold-alignments", bad_gold),
                  "gold.align, line 5: link 99-1 (0-based) is out of range"))
    cases.append((_analyze(entmax_data, "--path", checkpoint, "--out-dir", tmp_path, "--gold-alignments",
                           tmp_path / "missing.align"), "missing.align: no such alignment file"))
    (tmp_path / "empty.src").write_text("")
    (tmp_path / "empty.tgt").write_text("")
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--testpref", tmp_path / "empty",
            "--destdir", tmp_path / "empty-bin", "--srcdict", entmax_data / "dict.src.txt", "--tgtdict",
            entmax_data / "dict.tgt.txt", "--workers", "1")
    cases.append((_analyze(tmp_path / "empty-bin", "--path", checkpoint, "--out-dir", tmp_path),
                  "subset 'test' of " + str(tmp_path / "empty-bin") + " is empty"))
    cases.append((_analyze(entmax_data, "--path", checkpoint, "--out-dir", tmp_path, "--max-sentences", "0"),
                  "--max-sentences: must be a positive number, got 0"))
    other_data = make_translation_data(tmp_path / "other", train=40, valid=5, test=5)  # a smaller dictionary
    cases.append((_analyze(other_data, "--path", checkpoint, "--out-dir", tmp_path),
                  "do not match the checkpoint's"))
    cases.append((_analyze(entmax_data, "--path", checkpoint, "--out-dir", tmp_path, "--sentences", "0,x"),
                   "--sentences '0,x': expected sentence ids"))
    (tmp_path / "scores.tsv").write_text(f"{checkpoint}\t99.1\n")
    cases.append((_analyze(entmax_data, "--path", checkpoint, "--out-dir", tmp_path,
                           "--scores", tmp_path / "scores.tsv"),
                  "scores.tsv, line 1: expected checkpoint, BLEU and words/s"))
    for result, message in cases:
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
