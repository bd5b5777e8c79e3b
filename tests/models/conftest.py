"""Fixtures of the model tests: in-process tiny models, and one tiny transformer_entmax trained with fairseq-train."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.builders import REPO, TINY_MT_FLAGS, USER_DIR

BIN = Path(sys.executable).parent


def run_cli(command, *args, check=True, stdin=None, timeout=300, env=None):
    """Run a console script of this interpreter with our checkout first on PYTHONPATH; fail with its output tail."""
    executable = BIN / command if (BIN / command).exists() else command
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO),
                "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run([str(executable), *map(str, args)], capture_output=True, text=True, input=stdin,
                            env=full_env, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{command} exited {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}"
                    f"\n--- stderr ---\n{result.stderr[-5000:]}")
    return result


GENERATION_LIMITS = ["--max-len-a", "1.2", "--max-len-b", "5"]
TINY_LM_TRAIN_FLAGS = [
    "--task", "language_modeling", "--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim",
    "64", "--decoder-attention-heads", "2", "--sample-break-mode", "eos", "--tokens-per-sample", "64", "--max-tokens",
    "512", "--optimizer", "adam", "--lr", "3e-3", "--cpu", "--num-workers", "0", "--log-format", "simple",
    "--no-epoch-checkpoints", "--seed", "1",
]


def train_arch(arch, data_bin, save_dir, max_update, *extra, check=True):
    """fairseq-train a tiny translation model of ``arch`` with the plugin loaded."""
    return run_cli("fairseq-train", data_bin, "--user-dir", USER_DIR, "--arch", arch, *TINY_MT_FLAGS,
                   "--max-update", max_update, "--save-dir", save_dir, *extra, check=check)


def train_entmax(data_bin, save_dir, max_update, *extra, check=True):
    return train_arch("transformer_entmax", data_bin, save_dir, max_update, *extra, check=check)


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


@pytest.fixture(scope="session")
def entmax_data(tmp_path_factory):
    """Synthetic pair (300 train sentences), binarised with a joined dictionary; returns the data-bin folder."""
    root = tmp_path_factory.mktemp("entmax_data")
    run_cli("python", "-m", "sparse_attn_fairseq.data.synthetic_pair", root / "raw",
            "--train", 300, "--valid", 40, "--test", 40)
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", root / "raw/train",
            "--validpref", root / "raw/valid", "--testpref", root / "raw/test", "--destdir", root / "bin",
            "--joined-dictionary", "--workers", "1")
    return root / "bin"


@pytest.fixture(scope="session")
def entmax_run(entmax_data, tmp_path_factory):
    """transformer_entmax (learned alpha everywhere) trained for 30 updates: (save_dir, fairseq-train output)."""
    save_dir = tmp_path_factory.mktemp("entmax_ckpt")
    result = train_entmax(entmax_data, save_dir, 30)
    return save_dir, result.stdout + result.stderr
