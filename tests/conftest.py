"""Shared fixtures: run the real fairseq console scripts on small generated data, as a user would."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import pytest
import torch

# Without a GPU, the Triton kernels run under triton's interpreter on CPU tensors, so the kernel suites test them
# too (kernels/triton_entmax.py: it must be set before the package is imported, and it is never chosen by itself).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
USER_DIR = REPO / "sparse_attn_fairseq"
BIN = Path(sys.executable).parent

# A model small enough to train in seconds on 2 cores, for the command-line tests.
TINY_TRANSLATION_FLAGS = [
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--share-all-embeddings", "--dropout", "0.1",
    "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--max-tokens", "1024", "--seed", "1", "--num-workers", "0",
    "--log-format", "simple", "--log-interval", "5", "--no-epoch-checkpoints",
]


def cli_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for a console script: this interpreter's bin first, this checkout's package
    first on the path (also when the venv's editable install points at another checkout), our
    switches cleared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARSE_ATTN_FAIRSEQ")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_cli(command: str, *args, env: Optional[Dict[str, str]] = None, check: bool = True,
            stdin: Optional[str] = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script (from this interpreter's bin folder) and fail with its output tail."""
    executable = BIN / command if (BIN / command).exists() else command
    result = subprocess.run(
        [str(executable), *map(str, args)], capture_output=True, text=True, input=stdin,
        env=cli_env(env), timeout=timeout,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{command} exited {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}"
            f"\n--- stderr ---\n{result.stderr[-5000:]}"
        )
    return result


def make_translation_data(root: Path, train: int = 300, valid: int = 40, test: int = 40) -> Path:
    """Synthetic pair, binarised with a joined dictionary; returns the data-bin folder."""
    raw, data_bin = root / "raw", root / "bin"
    run_cli("python", "-m", "sparse_attn_fairseq.data.synthetic_pair", raw,
            "--train", train, "--valid", valid, "--test", test)
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
            "--trainpref", raw / "train", "--validpref", raw / "valid", "--testpref", raw / "test",
            "--destdir", data_bin, "--joined-dictionary", "--workers", "1")
    return data_bin


def train_translation(data_bin: Path, save_dir: Path, arch: str, max_update: int,
                      extra: Sequence[str] = (), cpu: bool = True) -> subprocess.CompletedProcess:
    """fairseq-train a tiny translation model with the plugin loaded (on the CPU unless ``cpu=False``)."""
    device = ["--cpu"] if cpu else []
    return run_cli("fairseq-train", data_bin, "--user-dir", USER_DIR, "--arch", arch, *device,
                   *TINY_TRANSLATION_FLAGS, "--max-update", max_update, "--save-dir", save_dir, *extra)


@pytest.fixture(scope="session")
def translation_data(tmp_path_factory) -> Path:
    """Binarised synthetic translation data (300 train pairs)."""
    return make_translation_data(tmp_path_factory.mktemp("translation"))


@pytest.fixture(scope="session")
def transformer_checkpoint(translation_data, tmp_path_factory) -> Path:
    """A stock fairseq transformer trained for 20 updates; returns its checkpoint_last.pt."""
    save_dir = tmp_path_factory.mktemp("transformer_ckpt")
    train_translation(translation_data, save_dir, "transformer", 20)
    return save_dir / "checkpoint_last.pt"


def train_model(arch, data_bin, save_dir, max_update, *extra, check=True):
    """fairseq-train ``arch`` at the model tests' tiny sizes (tests/models/builders.py)."""
    from tests.models.builders import TINY_MT_FLAGS

    return run_cli("fairseq-train", data_bin, "--user-dir", USER_DIR, "--arch", arch,
                   *TINY_MT_FLAGS, "--max-update", max_update, "--save-dir", save_dir, *extra, check=check)


@pytest.fixture(scope="session")
def entmax_data(translation_data):
    """Synthetic pair (300 train sentences), binarised with a joined dictionary: the shared data."""
    return translation_data


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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs console scripts or subprocesses (train, install, recipes); "
                                       "`pytest -m 'not slow'` (make test-fast) runs the in-process tests alone")


_SUBPROCESS_MARKS = ("run_cli(", "subprocess", "recipe(")


def pytest_collection_modifyitems(config, items):
    """Mark every test of a module that runs console scripts or subprocesses as slow."""
    slow_modules = {}
    for item in items:
        path = Path(str(item.fspath))
        if path not in slow_modules:
            source = path.read_text(encoding="utf-8") if path.suffix == ".py" else ""
            slow_modules[path] = any(mark in source for mark in _SUBPROCESS_MARKS)
        if slow_modules[path]:
            item.add_marker(pytest.mark.slow)
