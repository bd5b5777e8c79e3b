"""Fixtures of the model tests: tiny data, and one tiny model per architecture trained once with fairseq-train."""

import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli, train_model  # noqa: F401  (re-exported for the model tests)
from tests.models.builders import TINY_MT_FLAGS, USER_DIR


GENERATION_LIMITS = ["--max-len-a", "1.2", "--max-len-b", "5"]
TINY_LM_TRAIN_FLAGS = [
    "--task", "language_modeling", "--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim",
    "64", "--decoder-attention-heads", "2", "--sample-break-mode", "eos", "--tokens-per-sample", "64", "--max-tokens",
    "512", "--optimizer", "adam", "--lr", "3e-3", "--cpu", "--num-workers", "0", "--log-format", "simple",
    "--no-epoch-checkpoints", "--seed", "1",
]


def num_updates(checkpoint):
    from fairseq import checkpoint_utils

    return checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))["optimizer_history"][-1]["num_updates"]


def train_and_eval_lm(arch, translation_bin, tmp_path, *extra):
    """Binarise the target side as LM data, fairseq-train ``arch`` for 10 updates, fairseq-eval-lm it: both logs."""
    raw = translation_bin.parent / "raw"
    lm_bin = tmp_path / "lm-bin"
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.tgt", "--validpref", raw / "valid.tgt",
            "--testpref", raw / "test.tgt", "--destdir", lm_bin, "--workers", "1")
    train = run_cli("fairseq-train", lm_bin, "--user-dir", USER_DIR, "--arch", arch, *TINY_LM_TRAIN_FLAGS,
                    "--max-update", "10", "--save-dir", tmp_path / "ckpt", *extra)
    evaluate = run_cli("fairseq-eval-lm", lm_bin, "--user-dir", USER_DIR, "--path", tmp_path / "ckpt/checkpoint_last.pt",
                       "--sample-break-mode", "eos", "--max-tokens", "512", "--cpu")
    return train.stdout + train.stderr, evaluate.stdout + evaluate.stderr


def torchrun_rank_states(arch, data_bin, tmp_path, *extra):
    """fairseq-train ``arch`` for 6 updates in 2 CPU processes (torchrun, gloo); returns both ranks' final states."""
    import torch

    script = Path(__file__).with_name("ddp_state_dump.py")
    run_cli(Path(sys.executable).parent / "torchrun", "--nproc_per_node", "2", script, tmp_path, data_bin,
            "--user-dir", USER_DIR, "--arch", arch, *TINY_MT_FLAGS, "--max-update", "6", "--save-dir", tmp_path,
            "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp", "--disable-validation", *extra,
            env={"OMP_NUM_THREADS": "1"})
    assert num_updates(tmp_path / "checkpoint_last.pt") == 6
    return [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]


def train_entmax(data_bin, save_dir, max_update, *extra, check=True):
    return train_model("transformer_entmax", data_bin, save_dir, max_update, *extra, check=check)


# Every sparse translation architecture the command-line tests run (each trained once per session).
TRAINED_ARCHS = ("transformer_entmax", "transformer_rela")


@pytest.fixture(params=TRAINED_ARCHS)
def trained(request):
    """(arch, save_dir, fairseq-train output) for each architecture of TRAINED_ARCHS, trained once per session."""
    fixture = {"transformer_entmax": "entmax_run", "transformer_rela": "rela_run"}[request.param]
    return (request.param, *request.getfixturevalue(fixture))
