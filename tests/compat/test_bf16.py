"""--bf16 trains on the CPU through fairseq's own flag (the bf16_without_tpu fix): no NaN or inf, and a final
validation loss close to float32's, for every architecture. Without the fix fairseq looks for a TPU."""

import math
import re

import pytest

from tests.conftest import run_cli
from tests.models.builders import TINY_MT_FLAGS, USER_DIR

ARCHS = ["transformer_entmax", "transformer_rela", "transformer_adaptive_span"]
CLOSE = 0.1  # bits of validation loss between bfloat16 and float32 after 20 updates


def final_valid_loss(entmax_data, save_dir, arch, *extra, env=None, check=True):
    result = run_cli("fairseq-train", entmax_data, "--user-dir", USER_DIR, "--arch", arch, *TINY_MT_FLAGS,
                     "--max-update", "20", "--save-dir", save_dir, "--no-save", *extra, env=env, check=check)
    losses = re.findall(r"valid on 'valid' subset \| loss ([\w.]+)", result.stdout + result.stderr)
    return (float(losses[-1]) if losses else None), result


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_trains_on_cpu_close_to_float32(entmax_data, tmp_path, arch):
    float32, _ = final_valid_loss(entmax_data, tmp_path / "fp32", arch)
    bf16, _ = final_valid_loss(entmax_data, tmp_path / "bf16", arch, "--bf16")
    assert math.isfinite(bf16) and abs(bf16 - float32) <= CLOSE, (bf16, float32)


def test_memory_efficient_bf16_trains_on_cpu(entmax_data, tmp_path):
    float32, _ = final_valid_loss(entmax_data, tmp_path / "fp32", "transformer_entmax")
    bf16, _ = final_valid_loss(entmax_data, tmp_path / "bf16", "transformer_entmax", "--memory-efficient-bf16")
    assert math.isfinite(bf16) and abs(bf16 - float32) <= CLOSE, (bf16, float32)


def test_without_the_fix_bf16_asks_for_a_tpu(entmax_data, tmp_path):
    loss, result = final_valid_loss(entmax_data, tmp_path, "transformer_entmax", "--bf16", check=False,
                                    env={"SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE": "bf16_without_tpu"})
    assert loss is None and result.returncode != 0 and "xla_device" in result.stdout + result.stderr
