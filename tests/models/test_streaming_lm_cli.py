"""The streaming adaptive-span LM through the real commands: fairseq-train --task truncated_bptt_lm (and resume),
fairseq-eval-lm reporting bits per character, 2-process torchrun, fairseq-interactive generation; and the long-context
test: on a stream that repeats with a period longer than a block, memory and span learn to copy and the same model
without memory (plain language_modeling task) cannot."""

import re
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.models.builders import USER_DIR
from tests.models.conftest import num_updates

PERIOD, BLOCK = 12, 8  # every line repeats 12 tokens later: beyond a block of 8
MODEL = ["--arch", "transformer_lm_adaptive_span", "--decoder-layers", "1", "--decoder-embed-dim", "64",
         "--decoder-ffn-embed-dim", "128", "--decoder-attention-heads", "4", "--decoder-normalize-before",
         "--adaptive-span-max", "32", "--adaptive-span-ramp", "8", "--adaptive-span-init", "0.5", "--dropout", "0"]
TRAIN = ["--tokens-per-sample", str(BLOCK), "--batch-size", "16", "--optimizer", "adam", "--lr", "3e-3",
         "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50", "--clip-norm", "1", "--cpu", "--num-workers", "0",
         "--log-format", "simple", "--log-interval", "50", "--no-epoch-checkpoints", "--seed", "1"]
UPDATES = 1000


@pytest.fixture(scope="module")
def stream_bin(tmp_path_factory):
    root = tmp_path_factory.mktemp("periodic")
    run_cli("python", "-m", "sparse_attn_fairseq.data.synthetic_stream", root / "raw", "--tokens", "20000",
            "--period", str(PERIOD), "--symbols", "8", "--repeats", "4")
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", root / "raw/train.txt", "--validpref",
            root / "raw/valid.txt", "--testpref", root / "raw/test.txt", "--destdir", root / "bin", "--workers", "1")
    return root / "bin"


def train(data, save_dir, task, *extra, updates=UPDATES):
    result = run_cli("fairseq-train", data, "--user-dir", USER_DIR, "--task", task, *MODEL, *TRAIN,
                     "--max-update", updates, "--save-dir", save_dir, *extra)
    return result.stdout + result.stderr


def eval_bits(data, checkpoint, task, *extra):
    result = run_cli("fairseq-eval-lm", data, "--user-dir", USER_DIR, "--task", task, "--path", checkpoint,
                     "--gen-subset", "test", "--tokens-per-sample", str(BLOCK), "--batch-size", "4", "--cpu", *extra)
    return float(re.search(r"Loss \(base 2\): ([\d.]+)", result.stdout + result.stderr).group(1))


@pytest.fixture(scope="module")
def streaming_run(stream_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("streaming")
    log = train(stream_bin, save_dir, "truncated_bptt_lm", "--save-interval-updates", "400")
    return save_dir, log


def test_memory_and_span_learn_to_copy_beyond_the_block(stream_bin, streaming_run, tmp_path):
    save_dir, log = streaming_run
    assert re.search(r"span_dec [\d.]+", log) and "streams per rank" in log
    with_memory = eval_bits(stream_bin, save_dir / "checkpoint_best.pt", "truncated_bptt_lm")
    train(stream_bin, tmp_path, "language_modeling", "--sample-break-mode", "none")
    without = eval_bits(stream_bin, tmp_path / "checkpoint_best.pt", "language_modeling", "--sample-break-mode", "none")
    print(f"test bits per character: with memory {with_memory:.3f}, without memory {without:.3f}")
    random_part = (PERIOD - 1) / PERIOD * 3  # 3 bits for each random symbol of a line, the line end is free
    assert without > 0.85 * random_part  # a block never reaches the repeat: nothing to copy
    assert with_memory < without - 0.7  # far below: most repeats are copied from the memory


def test_resume_continues_from_the_last_checkpoint(stream_bin, streaming_run, tmp_path):
    save_dir, _ = streaming_run
    (tmp_path / "checkpoint_last.pt").write_bytes(next(save_dir.glob("checkpoint_*_400.pt")).read_bytes())
    log = train(stream_bin, tmp_path, "truncated_bptt_lm", updates=450)
    assert re.search(r"Loaded checkpoint .*\(epoch \d+ @ 400 updates\)", log) and num_updates(tmp_path / "checkpoint_last.pt") == 450


def test_interactive_generation_continues_prompts(stream_bin, streaming_run):
    save_dir, _ = streaming_run
    prompts = "a b c d e f g h a b c d\nh g f e\n"
    for flags in (["--beam", "2"], ["--sampling", "--beam", "1", "--seed", "3"]):
        result = run_cli("fairseq-interactive", stream_bin, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
                         "--path", save_dir / "checkpoint_best.pt", "--cpu", "--max-len-b", "30",
                         "--tokens-per-sample", str(BLOCK), *flags, stdin=prompts)
        hypotheses = [line.split("\t")[2] for line in result.stdout.splitlines() if line.startswith("H-")]
        assert len(hypotheses) == 2 and all(len(h.split()) > 4 for h in hypotheses)


def test_two_processes_train_their_own_streams(stream_bin, tmp_path):
    script = Path(__file__).with_name("ddp_state_dump.py")
    result = run_cli(Path(sys.executable).parent / "torchrun", "--nproc_per_node", "2", script, tmp_path, stream_bin,
                     "--user-dir", USER_DIR, "--task", "truncated_bptt_lm", *MODEL, *TRAIN, "--max-update", "6",
                     "--save-dir", tmp_path, "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp", env={"OMP_NUM_THREADS": "1"})
    assert "16 streams per rank x 2 ranks" in result.stdout + result.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0])
    assert num_updates(tmp_path / "checkpoint_last.pt") == 6


def test_the_commands_of_fairseqs_adaptive_span_example_run(stream_bin, tmp_path):
    """examples/adaptive_span/README.md's train and eval commands, scaled down; the data folder is positional (the
    README's ``--data`` is not a fairseq-train flag)."""
    run_cli("fairseq-train", "--user-dir", USER_DIR, stream_bin, "--max-update", "6", "--task", "truncated_bptt_lm",
            "--tokens-per-sample", "8", "--arch", "adaptive_span", "--n-layer", "2", "--d-model", "32", "--n-head",
            "2", "--d-inner", "64", "--dropout", "0.3", "--attn-span", "64", "--optimizer", "adagrad_with_grad_clip",
            "--adagrad-clip", "0.03", "--validate-interval-updates", "3", "--lr-scheduler", "fixed",
            "--warmup-updates", "2", "--batch-size-valid", "4", "--lr", "0.07", "--criterion", "adaptive_span_loss",
            "--batch-size", "4", "--update-freq", "1", "--seed", "2", "--log-format", "json", "--log-interval", "3",
            "--aux-loss-scaler", "5e-07", "--cpu", "--save-dir", tmp_path)
    result = run_cli("fairseq-eval-lm", stream_bin, "--path", tmp_path / "checkpoint_best.pt", "--user-dir", USER_DIR,
                     "--task", "truncated_bptt_lm", "--batch-size", "8", "--tokens-per-sample", "8", "--gen-subset",
                     "test", "--cpu")
    assert re.search(r"Loss \(base 2\): [\d.]+", result.stdout + result.stderr)
