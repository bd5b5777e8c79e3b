"""Stock fairseq commands work unchanged on Python 3.11+, torch 2.6+ and numpy 2 with the plugin."""

import re
import shutil

import torch

from tests.conftest import USER_DIR, run_cli, train_translation


def _num_updates(checkpoint) -> int:
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
    return state["optimizer_history"][-1]["num_updates"]


def test_train_writes_loadable_checkpoint(transformer_checkpoint):
    assert transformer_checkpoint.exists()
    assert _num_updates(transformer_checkpoint) == 20


def test_resume_continues_from_checkpoint(translation_data, transformer_checkpoint, tmp_path):
    shutil.copy(transformer_checkpoint, tmp_path / "checkpoint_last.pt")
    result = train_translation(translation_data, tmp_path, "transformer", 30)
    log = result.stdout + result.stderr
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 20 updates\)", log), log[-2000:]
    assert _num_updates(tmp_path / "checkpoint_last.pt") == 30


def test_generate_with_beam_and_alignment(translation_data, transformer_checkpoint):
    result = run_cli("fairseq-generate", translation_data, "--user-dir", USER_DIR,
                     "--path", transformer_checkpoint, "--gen-subset", "test", "--beam", "5",
                     "--batch-size", "16", "--print-alignment", "--cpu")
    hypotheses = [line for line in result.stdout.splitlines() if line.startswith("H-")]
    alignments = [line for line in result.stdout.splitlines() if line.startswith("A-")]
    assert len(hypotheses) == 40 and len(alignments) == 40
    assert all(re.fullmatch(r"A-\d+\t(\d+-\d+ ?)*", line) for line in alignments)


def test_interactive_translates_stdin(translation_data, transformer_checkpoint):
    source = (translation_data.parent / "raw" / "test.src").read_text().splitlines()[:3]
    result = run_cli("fairseq-interactive", translation_data, "--user-dir", USER_DIR,
                     "--path", transformer_checkpoint, "--beam", "5", "--source-lang", "src",
                     "--target-lang", "tgt", "--cpu", stdin="\n".join(source) + "\n")
    hypotheses = [line for line in result.stdout.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == 3


def test_validate_reports_loss(translation_data, transformer_checkpoint):
    result = run_cli("fairseq-validate", translation_data, "--user-dir", USER_DIR,
                     "--path", transformer_checkpoint, "--task", "translation", "--valid-subset", "valid", "--cpu",
                     "--num-batch-buckets", "2",  # numpy 2: np.compat.long upstream
                     "--max-tokens", "1024")
    assert re.search(r"valid on 'valid' subset \| loss [\d.]+", result.stdout + result.stderr)


def test_hub_interface_translates(translation_data, transformer_checkpoint):
    from fairseq.models.transformer import TransformerModel

    hub = TransformerModel.from_pretrained(
        str(transformer_checkpoint.parent), checkpoint_file=transformer_checkpoint.name,
        data_name_or_path=str(translation_data), user_dir=str(USER_DIR),
        source_lang="src", target_lang="tgt",
    )
    sentence = (translation_data.parent / "raw" / "test.src").read_text().splitlines()[0]
    translation = hub.translate(sentence, beam=5)
    assert isinstance(translation, str) and translation.strip()


def test_eval_lm_with_eos_break_mode(translation_data, tmp_path):
    """Language modelling with --sample-break-mode eos (numpy 2 breaks it upstream)."""
    raw = translation_data.parent / "raw"
    lm_bin = tmp_path / "lm-bin"
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.tgt",
            "--validpref", raw / "valid.tgt", "--testpref", raw / "test.tgt",
            "--destdir", lm_bin, "--workers", "1")
    run_cli("fairseq-train", lm_bin, "--user-dir", USER_DIR, "--task", "language_modeling",
            "--arch", "transformer_lm", "--decoder-layers", "1", "--decoder-embed-dim", "32",
            "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2",
            "--sample-break-mode", "eos", "--tokens-per-sample", "64", "--max-tokens", "512",
            "--optimizer", "adam", "--lr", "1e-3", "--max-update", "10", "--cpu",
            "--save-dir", tmp_path / "ckpt", "--no-epoch-checkpoints", "--num-workers", "0")
    result = run_cli("fairseq-eval-lm", lm_bin, "--user-dir", USER_DIR,
                     "--path", tmp_path / "ckpt" / "checkpoint_last.pt", "--gen-subset", "test",
                     "--sample-break-mode", "eos", "--max-tokens", "512", "--cpu")
    match = re.search(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", result.stdout + result.stderr)
    assert match and torch.isfinite(torch.tensor(float(match.group(2))))
