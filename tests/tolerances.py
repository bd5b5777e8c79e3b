"""The one tolerance table of the test suite: max abs error allowed per dtype, against float64 references."""

import torch

ATOL = {
    torch.float64: 1e-9,
    torch.float32: 1e-5,
    torch.bfloat16: 1e-2,  # output rounding of bf16 (8 bits of mantissa) on values <= 1
    torch.float16: 1e-3,
}
GRADCHECK = {"eps": 1e-6, "atol": 1e-6, "rtol": 1e-4}  # float64 finite differences


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
