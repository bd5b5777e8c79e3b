"""Fixtures of the model tests: tiny data, and one tiny model per architecture trained once with fairseq-train."""

import pytest

from tests.conftest import run_cli  # noqa: F401  (re-exported for the model tests)
from tests.models.builders import TINY_MT_FLAGS, USER_DIR


def train_model(arch, data_bin, save_dir, max_update, *extra, check=True):
    """fairseq-train ``arch`` at the tiny sizes."""
    return run_cli("fairseq-train", data_bin, "--user-dir", USER_DIR, "--arch", arch,
                   *TINY_MT_FLAGS, "--max-update", max_update, "--save-dir", save_dir, *extra, check=check)


def train_entmax(data_bin, save_dir, max_update, *extra, check=True):
    return train_model("transformer_entmax", data_bin, save_dir, max_update, *extra, check=check)


# Every sparse translation architecture the command-line tests run (each trained once per session).
TRAINED_ARCHS = ("transformer_entmax", "transformer_rela")


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


@pytest.fixture(params=TRAINED_ARCHS)
def trained(request):
    """(arch, save_dir, fairseq-train output) for each architecture of TRAINED_ARCHS, trained once per session."""
    fixture = {"transformer_entmax": "entmax_run", "transformer_rela": "rela_run"}[request.param]
    return (request.param, *request.getfixturevalue(fixture))
