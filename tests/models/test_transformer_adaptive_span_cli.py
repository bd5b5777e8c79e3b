"""transformer_adaptive_span and transformer_lm_adaptive_span through the real fairseq console scripts."""

import re
import shutil

import pytest
import torch

from tests.models.builders import USER_DIR
from tests.models.conftest import (
    GENERATION_LIMITS, num_updates, run_cli, torchrun_rank_states, train_and_eval_lm, train_model,
)

# Short spans (z = 4 tokens, ramp 2: 6 keys) so that banding and cache trimming are exercised on these sentences,
# and a large penalty so the spans visibly shrink within 30 updates.
SPAN_FLAGS = ["--adaptive-span-max", "16", "--adaptive-span-ramp", "2", "--adaptive-span-init", "0.25",
              "--adaptive-span-loss", "0.05"]


@pytest.fixture(scope="session")
def span_run(entmax_data, tmp_path_factory):
    """transformer_adaptive_span trained for 30 updates: (save_dir, fairseq-train output)."""
    save_dir = tmp_path_factory.mktemp("span_ckpt")
    result = train_model("transformer_adaptive_span", entmax_data, save_dir, 30, *SPAN_FLAGS)
    return save_dir, result.stdout + result.stderr


def test_train_and_valid_logs_show_spans_shrinking(span_run):
    save_dir, log = span_run
    assert num_updates(save_dir / "checkpoint_last.pt") == 30
    for line_kind in ("train", "valid"):
        line = next(line for line in log.splitlines() if f"| {line_kind} |" in line)
        for key in ("span_enc", "span_dec", "span_enc_0", "span_dec_0"):
            assert re.search(rf"{key} [\d.]+", line), line
    spans = [float(v) for v in re.findall(r"train_inner .*?span_dec=([\d.]+)", log)]
    assert len(spans) >= 3 and spans[-1] < spans[0] <= 4.0


def test_resume_continues_from_checkpoint(entmax_data, span_run, tmp_path):
    shutil.copy(span_run[0] / "checkpoint_last.pt", tmp_path / "checkpoint_last.pt")
    log = train_model("transformer_adaptive_span", entmax_data, tmp_path, 35, *SPAN_FLAGS)
    assert re.search(r"Loaded checkpoint .*\(epoch \d+ @ 30 updates\)", log.stdout + log.stderr)
    assert num_updates(tmp_path / "checkpoint_last.pt") == 35


def test_generate_with_beam_5(entmax_data, span_run):
    result = run_cli("fairseq-generate", entmax_data, "--user-dir", USER_DIR, "--path",
                     span_run[0] / "checkpoint_last.pt", "--gen-subset", "test", "--beam", "5", "--batch-size", "16",
                     "--print-alignment", "--cpu", *GENERATION_LIMITS)
    lines = result.stdout.splitlines()
    assert sum(line.startswith("H-") for line in lines) == 40
    assert sum(line.startswith("A-") for line in lines) == 40


def test_interactive_and_hub_translate(entmax_data, span_run):
    from fairseq.models.transformer import TransformerModel

    source = (entmax_data.parent / "raw" / "test.src").read_text().splitlines()[:3]
    result = run_cli("fairseq-interactive", entmax_data, "--user-dir", USER_DIR, "--path",
                     span_run[0] / "checkpoint_last.pt", "--beam", "5", "--source-lang", "src", "--target-lang",
                     "tgt", "--cpu", *GENERATION_LIMITS, stdin="\n".join(source) + "\n")
    assert sum(line.startswith("H-") for line in result.stdout.splitlines()) == 3
    hub = TransformerModel.from_pretrained(str(span_run[0]), checkpoint_file="checkpoint_last.pt",
                                           data_name_or_path=str(entmax_data), user_dir=str(USER_DIR),
                                           source_lang="src", target_lang="tgt")
    assert type(hub.models[0]).__name__ == "TransformerAdaptiveSpanModel"
    assert hub.translate(source[0], beam=5, max_len_a=1.2, max_len_b=5).strip()


def test_invalid_span_flags_stop_training_before_it_starts(entmax_data, tmp_path):
    result = train_model("transformer_adaptive_span", entmax_data, tmp_path, 5, "--adaptive-span-ramp", "0",
                        "--adaptive-span-init", "2", check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "--adaptive-span-ramp=0" in log and "--adaptive-span-init=2.0" in log
    assert "Start iterating" not in log and not list(tmp_path.glob("*.pt"))


def test_two_process_cpu_training_keeps_ranks_identical(entmax_data, tmp_path):
    ranks = torchrun_rank_states("transformer_adaptive_span", entmax_data, tmp_path, *SPAN_FLAGS)
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0])
    spans = [value for name, value in ranks[0].items() if name.endswith("span_frac")]
    assert len(spans) == 2 and all(((s >= 0) & (s <= 1)).all() for s in spans)


def test_language_model_trains_and_evaluates(entmax_data, tmp_path):
    train_log, eval_log = train_and_eval_lm("transformer_lm_adaptive_span", entmax_data, tmp_path,
                                            "--adaptive-span-max", "16", "--adaptive-span-ramp", "2",
                                            "--adaptive-span-init", "0.25")
    assert re.search(r"span_dec [\d.]+", train_log) and re.search(r"span_dec_0 [\d.]+", train_log)
    assert re.search(r"Loss \(base 2\): [\d.]+, Perplexity: [\d.]+", eval_log)
