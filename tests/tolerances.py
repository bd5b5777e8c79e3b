"""The one tolerance table of the test suite: max abs error allowed per dtype, against float64 references."""

import torch

ATOL = {
    torch.float64: 1e-9,
    torch.float32: 1e-5,
    torch.bfloat16: 1e-2,  # output rounding of bf16 (8 bits of mantissa) on values <= 1
    torch.float16: 1e-3,
}
GRADCHECK = {"eps": 1e-6, "atol": 1e-6, "rtol": 1e-4}  # float64 finite differences
KERNEL_GRAD = 1e-4  # a float32 kernel's gradients against the float64 reference's, relative to their largest value
# Two computations of the same function (max abs difference):
INCREMENTAL = 1e-5  # step-by-step incremental decoding against one full forward, float32
INCREMENTAL_LOGPROBS = 1e-4  # the same for whole models' log-probabilities (float32, a few layers deep)
BAND = 1e-5  # banded span attention against the full masked computation
STREAMING = 1e-5  # blocks with memory against one forward over the whole sequence, float64 (issue: <= 1e-5)
CLOSED_FORM = 1e-6  # float32 values against a closed form or a hand-built reference
STOCK = 1e-5  # our modules with softmax against fairseq's own (float32)
SPAN_PENALTY = 1e-6  # the span penalty's gradient against its closed form
DISTRIBUTED = 1e-5  # parameters after 2-process training against one process on the same batches


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
