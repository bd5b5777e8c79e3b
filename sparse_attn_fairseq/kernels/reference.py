"""The reference kernel: each normalizer's plain PyTorch function (functional/), on every device and float dtype."""

from __future__ import annotations

import torch

from sparse_attn_fairseq.kernels.registry import ALPHA_GRAD, REFERENCE, Kernel, reference_function, register_kernel


def reference_normalize(normalizer: str, scores: torch.Tensor, mask, alpha) -> torch.Tensor:
    return reference_function(normalizer)(scores, mask, alpha)


REFERENCE_KERNEL = register_kernel(Kernel(
    name=REFERENCE,
    normalizers=None,  # all of them
    devices=frozenset(("cpu", "cuda", "mps", "meta")),
    dtypes=frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64)),
    features=frozenset((ALPHA_GRAD,)),
    fn=reference_normalize,
    priority=-100,
))
