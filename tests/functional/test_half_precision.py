"""Under fp16 and bf16 (fairseq's --fp16, --memory-efficient-fp16, --amp, --bf16) every normaliser computes in
float32: its half-precision output is exactly the float32 computation on the same inputs, rounded to their dtype."""

import pytest
import torch

from sparse_attn_fairseq.functional.entmax import entmax15, entmax_alpha, softmax_masked, sparsemax
from sparse_attn_fairseq.functional.rela import rela_weights

FUNCTIONS = {
    "softmax": softmax_masked,
    "sparsemax": sparsemax,
    "entmax15": entmax15,
    "entmax_alpha": lambda x, mask: entmax_alpha(x, torch.tensor([1.2, 1.5, 1.8])[:, None, None], mask),
    "rela": rela_weights,
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_half_inputs_are_computed_in_float32(name, dtype):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, 5, 40, generator=generator) * 4).to(dtype)
    mask = torch.zeros(2, 1, 1, 40, dtype=torch.bool)
    mask[1, ..., 25:] = True
    mask[0, ..., :] = False
    half = FUNCTIONS[name](x, mask)
    single = FUNCTIONS[name](x.float(), mask).to(dtype)
    assert half.dtype == dtype and torch.equal(half, single)
