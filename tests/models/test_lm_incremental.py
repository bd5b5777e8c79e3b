"""Incremental decoding of every language model equals its full forward, with a beam reorder (float64)."""

import pytest

import sparse_attn_fairseq  # noqa: F401  (registers the architectures)

from tests.models.builders import NO_DROPOUT, TINY_LM_FLAGS, build, lm_incremental_vs_full
from tests.tolerances import INCREMENTAL

CASES = [
    ("transformer_lm_entmax", ["--decoder-attention-normalizer", "entmax_alpha"]),
    ("transformer_lm_entmax", ["--decoder-attention-normalizer", "sparsemax"]),
    ("transformer_lm_entmax", ["--decoder-attention-normalizer", "softmax"]),
    ("transformer_lm_rela", []),
    ("transformer_lm_adaptive_span", ["--adaptive-span-max", "8", "--adaptive-span-init", "0.5"]),
    ("transformer_lm_adaptive_span", ["--adaptive-span-max", "8", "--adaptive-span-dynamic"]),
]


@pytest.mark.parametrize("arch,flags", CASES)
def test_language_model_incremental_equals_full(arch, flags):
    model, task = build(arch, *flags, *NO_DROPOUT, "--decoder-layers", "2", base=TINY_LM_FLAGS)
    assert lm_incremental_vs_full(model.double().eval(), task) <= INCREMENTAL
