"""Fixtures of the model tests: in-process tiny models, and one tiny transformer_entmax trained with fairseq-train."""

import pytest

from tests.conftest import run_cli  # noqa: F401  (re-exported for the model tests)
from tests.models.builders import TINY_MT_FLAGS, USER_DIR


def train_entmax(data_bin, save_dir, max_update, *extra, check=True):
    return run_cli("fairseq-train", data_bin, "--user-dir", USER_DIR, "--arch", "transformer_entmax",
                   *TINY_MT_FLAGS, "--max-update", max_update, "--save-dir", save_dir, *extra, check=check)


@pytest.fixture(scope="session")
def entmax_data(translation_data):
    """Synthetic pair (300 train sentences), binarised with a joined dictionary: the shared data."""
    return translation_data


@pytest.fixture(scope="session")
def entmax_run(entmax_data, tmp_path_factory):
    """transformer_entmax (learned alpha everywhere) trained for 30 updates: (save_dir, fairseq-train output)."""
    save_dir = tmp_path_factory.mktemp("entmax_ckpt")
    result = train_entmax(entmax_data, save_dir, 30)
    return save_dir, result.stdout + result.stderr
