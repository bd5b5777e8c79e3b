"""Every sparse architecture through the real fairseq console scripts, on tiny generated data.

Shared checks are parametrised by architecture (``trained``: one tiny model per architecture and session); each
method's own log keys and flag errors follow.
"""

import re
import shutil

import pytest
import torch

from tests.models.builders import USER_DIR
from tests.models.conftest import (
    GENERATION_LIMITS, num_updates as _num_updates, run_cli, torchrun_rank_states, train_and_eval_lm, train_entmax,
    train_model,
)

MODEL_CLASSES = {"transformer_entmax": "TransformerEntmaxModel", "transformer_rela": "TransformerRelaModel"}


def _log_line(log, kind):
    return next(line for line in log.splitlines() if f"| {kind} |" in line)


def test_entmax_logs_alpha_and_sparsity_per_attention_type(entmax_run):
    save_dir, log = entmax_run
    assert _num_updates(save_dir / "checkpoint_last.pt") == 30
    for line_kind in ("train", "valid"):
        line = _log_line(log, line_kind)
        for key in ("alpha_enc", "alpha_dec", "alpha_encdec", "zeros_enc", "zeros_dec", "zeros_encdec"):
            assert re.search(rf"{key} [\d.]+", line), line
    alphas = [float(v) for v in re.findall(r"alpha_\w+ ([\d.]+)", log)]
    assert all(1.01 <= a <= 2.0 for a in alphas)


def test_rela_logs_zeros_and_null_rows_per_attention_type(rela_run):
    save_dir, log = rela_run
    assert _num_updates(save_dir / "checkpoint_last.pt") == 30
    for line_kind in ("train", "valid"):
        line = _log_line(log, line_kind)
        for key in ("zeros_enc", "zeros_dec", "zeros_encdec", "null_enc", "null_dec", "null_encdec"):
            assert re.search(rf"{key} [\d.]+", line), line
        assert "alpha_" not in line
    fractions = [float(v) for v in re.findall(r"(?:zeros|null)_\w+ ([\d.]+)", log)]
    assert all(0.0 <= f <= 1.0 for f in fractions) and any(f > 0 for f in fractions)


def test_resume_continues_from_checkpoint(entmax_data, trained, tmp_path):
    arch, save_dir, _ = trained
    shutil.copy(save_dir / "checkpoint_last.pt", tmp_path / "checkpoint_last.pt")
    log = train_model(arch, entmax_data, tmp_path, 35)
    assert re.search(r"Loaded checkpoint .*\(epoch \d+ @ 30 updates\)", log.stdout + log.stderr)
    assert _num_updates(tmp_path / "checkpoint_last.pt") == 35


def test_generate_beam_with_alignment(entmax_data, trained):
    _, save_dir, _ = trained
    result = run_cli("fairseq-generate", entmax_data, "--user-dir", USER_DIR, "--path",
                     save_dir / "checkpoint_last.pt", "--gen-subset", "test", "--beam", "5", "--batch-size", "16",
                     "--print-alignment", "--cpu", *GENERATION_LIMITS)
    lines = result.stdout.splitlines()
    assert sum(line.startswith("H-") for line in lines) == 40
    assert "nan" not in " ".join(line for line in lines if line.startswith(("H-", "P-"))).lower()
    alignments = [line for line in lines if line.startswith("A-")]
    assert len(alignments) == 40 and all(re.fullmatch(r"A-\d+\t(\d+-\d+ ?)*", line) for line in alignments)


def test_interactive_translates_stdin(entmax_data, trained):
    _, save_dir, _ = trained
    source = (entmax_data.parent / "raw" / "test.src").read_text().splitlines()[:3]
    result = run_cli("fairseq-interactive", entmax_data, "--user-dir", USER_DIR, "--path",
                     save_dir / "checkpoint_last.pt", "--beam", "5", "--source-lang", "src", "--target-lang",
                     "tgt", "--cpu", *GENERATION_LIMITS, stdin="\n".join(source) + "\n")
    assert sum(line.startswith("H-") for line in result.stdout.splitlines()) == 3


def test_hub_interface_translates(entmax_data, trained):
    from fairseq.models.transformer import TransformerModel

    arch, save_dir, _ = trained
    hub = TransformerModel.from_pretrained(str(save_dir), checkpoint_file="checkpoint_last.pt",
                                           data_name_or_path=str(entmax_data), user_dir=str(USER_DIR),
                                           source_lang="src", target_lang="tgt")
    assert type(hub.models[0]).__name__ == MODEL_CLASSES[arch]
    sentence = (entmax_data.parent / "raw" / "test.src").read_text().splitlines()[0]
    assert hub.translate(sentence, beam=5, max_len_a=1.2, max_len_b=5).strip()


def test_entmax_invalid_flag_values_stop_training_before_it_starts(entmax_data, tmp_path):
    result = train_entmax(entmax_data, tmp_path, 5, "--entmax-alpha-min", "0.5", "--entmax-alpha-init", "abc",
                          check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "--entmax-alpha-min=0.5" in log and "--entmax-alpha-init='abc'" in log
    assert "Start iterating" not in log and not list(tmp_path.glob("*.pt"))
    result = train_entmax(entmax_data, tmp_path, 5, "--decoder-attention-normalizer", "softmaxx", check=False)
    assert result.returncode != 0 and "--decoder-attention-normalizer" in result.stderr


def test_rela_invalid_flag_values_name_the_flag(entmax_data, tmp_path):
    for flags, named in ((["--rela-norm-variant", "gate"], "--rela-norm-variant"),
                         (["--encoder-attention-normalizer", "entmax15"], "--encoder-attention-normalizer")):
        result = train_model("transformer_rela", entmax_data, tmp_path, 5, *flags, check=False)
        assert result.returncode != 0 and named in result.stderr and flags[1] in result.stderr
        assert not list(tmp_path.glob("*.pt"))


def test_two_process_cpu_training_keeps_ranks_identical(entmax_data, trained, tmp_path):
    ranks = torchrun_rank_states(trained[0], entmax_data, tmp_path)
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0])


@pytest.mark.parametrize("arch, log_key", [("transformer_lm_entmax", "alpha_dec"), ("transformer_lm_rela", "null_dec")])
def test_language_model_trains_and_evaluates(entmax_data, tmp_path, arch, log_key):
    train_log, eval_log = train_and_eval_lm(arch, entmax_data, tmp_path)
    assert re.search(rf"{log_key} [\d.]+", train_log)
    assert re.search(r"Loss \(base 2\): [\d.]+, Perplexity: [\d.]+", eval_log)


def test_interactive_empty_and_overlong_lines(entmax_data, trained):
    """An empty line is translated (from the end-of-sentence token alone) with finite scores; a line longer than
    the model's positions stops with fairseq's error naming the size, or is skipped with
    --skip-invalid-size-inputs-valid-test. Never NaN."""
    _, save_dir, _ = trained
    words = (entmax_data.parent / "raw" / "test.src").read_text().split()
    overlong = " ".join(words[i % len(words)] for i in range(1100))  # max positions: 1024
    common = ["fairseq-interactive", entmax_data, "--user-dir", USER_DIR, "--path", save_dir / "checkpoint_last.pt",
              "--beam", "2", "--source-lang", "src", "--target-lang", "tgt", "--cpu", *GENERATION_LIMITS]
    empty = run_cli(*common, stdin="\n")
    scores = [line.split("\t")[1] for line in empty.stdout.splitlines() if line.startswith("H-")]
    assert len(scores) == 1 and "nan" not in scores[0] and float(scores[0]) < 0
    refused = run_cli(*common, stdin=f"{overlong}\n", check=False)
    assert refused.returncode != 0 and "is invalid" in refused.stdout + refused.stderr
    skipped = run_cli(*common, "--skip-invalid-size-inputs-valid-test", stdin=f"{words[0]}\n{overlong}\n")
    lines = skipped.stdout + skipped.stderr
    assert sum(line.startswith("H-") for line in skipped.stdout.splitlines()) == 1 and "nan" not in lines.lower()


def test_resuming_from_a_checkpoint_of_another_architecture_is_refused(entmax_data, entmax_run, tmp_path):
    """checkpoint_last.pt of transformer_entmax in the save dir of a transformer_rela run: fairseq's clear error,
    and the checkpoint is left as it was."""
    save_dir, _ = entmax_run
    checkpoint = tmp_path / "checkpoint_last.pt"
    checkpoint.write_bytes((save_dir / "checkpoint_last.pt").read_bytes())
    before = checkpoint.read_bytes()
    result = train_model("transformer_rela", entmax_data, tmp_path, 40, check=False)
    assert result.returncode != 0
    assert "Cannot load model parameters from checkpoint" in result.stdout + result.stderr
    assert checkpoint.read_bytes() == before


def test_generate_empty_and_overlong_sentences(entmax_data, trained, tmp_path):
    """fairseq-generate on a test set with an empty source line and one longer than the model's positions: the
    overlong one stops generation with fairseq's error naming its size, or is skipped with
    --skip-invalid-size-inputs-valid-test; the empty one is translated with finite scores."""
    _, save_dir, _ = trained
    words = (entmax_data.parent / "raw" / "test.src").read_text().split()
    overlong = " ".join(words[i % len(words)] for i in range(1100))
    for side in ("src", "tgt"):
        (tmp_path / f"odd.{side}").write_text(f"\n{overlong}\n{words[0]} {words[1]}\n")
    data = tmp_path / "bin"
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--testpref", tmp_path / "odd",
            "--srcdict", entmax_data / "dict.src.txt", "--tgtdict", entmax_data / "dict.tgt.txt", "--destdir", data,
            "--workers", "1")
    common = ["fairseq-generate", data, "--user-dir", USER_DIR, "--path", save_dir / "checkpoint_last.pt",
              "--gen-subset", "test", "--beam", "2", "--batch-size", "4", "--cpu", *GENERATION_LIMITS]
    refused = run_cli(*common, check=False)
    assert refused.returncode != 0 and "is invalid" in refused.stdout + refused.stderr
    skipped = run_cli(*common, "--skip-invalid-size-inputs-valid-test")
    hypotheses = [line for line in skipped.stdout.splitlines() if line.startswith("H-")]
    assert sorted(line.split("\t")[0] for line in hypotheses) == ["H-0", "H-2"]
    assert all(float(line.split("\t")[1]) < 0 for line in hypotheses)  # finite scores, no NaN
