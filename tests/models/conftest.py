"""Fixtures of the model tests: tiny data, and one tiny model per architecture trained once with fairseq-train."""

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


def train_model(arch, data_bin, save_dir, max_update, *extra, check=True):
    """fairseq-train ``arch`` at the tiny sizes."""
    return run_cli("fairseq-train", data_bin, "--user-dir", USER_DIR, "--arch", arch,
                   *TINY_MT_FLAGS, "--max-update", max_update, "--save-dir", save_dir, *extra, check=check)


def train_entmax(data_bin, save_dir, max_update, *extra, check=True):
    return train_model("transformer_entmax", data_bin, save_dir, max_update, *extra, check=check)


# Every sparse translation architecture the command-line tests run (each trained once per session).
TRAINED_ARCHS = ("transformer_entmax", "transformer_rela")


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


def _trained(arch, data_bin, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp(f"{arch}_ckpt")
    result = train_model(arch, data_bin, save_dir, 30)
    return save_dir, result.stdout + result.stderr


@pytest.fixture(scope="session")
def entmax_run(entmax_data, tmp_path_factory):
    """transformer_entmax (learned alpha everywhere) trained for 30 updates: (save_dir, fairseq-train output)."""
    return _trained("transformer_entmax", entmax_data, tmp_path_factory)


@pytest.fixture(scope="session")
def rela_run(entmax_data, tmp_path_factory):
    """transformer_rela (ReLA-g everywhere) trained for 30 updates: (save_dir, fairseq-train output)."""
    return _trained("transformer_rela", entmax_data, tmp_path_factory)


@pytest.fixture(params=TRAINED_ARCHS)
def trained(request):
    """(arch, save_dir, fairseq-train output) for each architecture of TRAINED_ARCHS, trained once per session."""
    fixture = {"transformer_entmax": "entmax_run", "transformer_rela": "rela_run"}[request.param]
    return (request.param, *request.getfixturevalue(fixture))
