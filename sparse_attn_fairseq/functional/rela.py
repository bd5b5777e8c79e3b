"""ReLA: rectified linear attention and its output normalisation (Zhang, Titov, Sennrich, EMNLP 2021, section 3).

Weights are relu(scores) with no normalisation over keys, so a row may be all zero ("null attention"). Stability comes
from RMSNorm on the attention output (:func:`rms_norm`), optionally gated (see layers/rela_norm.py).
"""

from __future__ import annotations

import torch

from sparse_attn_fairseq.functional.masking import check_mask


def rela_weights(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """w = relu(z) with masked entries set to 0 before the relu (an additive -inf never reaches it).

    Entries that are -inf, or at or below the finite-mask threshold (masking.masked_score_threshold), count as masked
    as well; they would give 0 under relu anyway, so only ``mask`` needs an explicit fill.

    Args:
        scores: (..., src_len), typically (bsz, num_heads, tgt_len, src_len) already divided by sqrt(head_dim).
        mask: optional bool tensor broadcastable to scores, True = masked.

    Returns:
        Tensor like ``scores``: non-negative, unnormalised; masked entries exactly 0.
    """
    check_mask(scores, mask)
    if mask is not None:
        scores = scores.masked_fill(mask, 0.0)
    return torch.relu(scores)


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """y = gain * x / sqrt(mean(x^2) + eps) over the last dim (Zhang & Sennrich, NeurIPS 2019; ReLA section 3.2).

    fp16/bf16 inputs are computed in float32 and returned in their dtype.

    Args:
        x: (..., d).
        gain: (d,) or broadcastable to x.
        eps: added to the mean square (the ReLA authors use 1e-8).

    Returns:
        Tensor like ``x``.
    """
    x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    return (x32 * inv_rms * gain).to(x.dtype)
