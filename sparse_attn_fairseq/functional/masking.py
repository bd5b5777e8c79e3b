"""Mask handling shared by every attention normalizer.

Convention: ``mask`` is an optional bool tensor broadcastable to the scores, True = masked (excluded). A score that is
``-inf``, or a large finite negative value used as an additive mask (see :func:`masked_score_threshold`), is masked
too. Masked entries get weight exactly 0; a row whose keys are all masked gets all zeros (never NaN) and zero gradient.
"""

from __future__ import annotations

import torch

from sparse_attn_fairseq.functional.host import reads_are_free

# Finite additive masks in the wild: -1e9, -1e8, torch.finfo(dtype).min; -5e7 still catches -1e8 after bf16 rounding
# (-99876864). Real logits stay far above this.
_FINITE_MASK_VALUE = -5e7


def masked_score_threshold(dtype: torch.dtype) -> float:
    """Score at or below which an entry counts as masked: max(-5e7, finfo(dtype).min / 2).

    fp16 cannot hold -5e7, so there half its lowest value (-32752) is used; logits of magnitude 1e4 stay valid.
    """
    return max(_FINITE_MASK_VALUE, torch.finfo(dtype).min / 2)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, fp16 and bf16 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Raise if ``mask`` is not a bool tensor broadcastable to ``scores``.

    Raises:
        TypeError: mask is not a bool tensor.
        ValueError: mask does not broadcast to the scores' shape.
    """
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = masked), got {getattr(mask, 'dtype', type(mask))}")
    if not broadcasts_to(mask.shape, scores.shape):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to {tuple(scores.shape)}")


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target``.

    Plain Python: the first ``torch.broadcast_shapes`` call imports sympy (0.25 s), inside the timed decoding loop.
    """
    if len(shape) > len(target):
        return False
    return all(size in (1, full) for size, full in zip(reversed(shape), reversed(target)))


def dead_rows(row_max: torch.Tensor, input_dtype: torch.dtype) -> torch.Tensor:
    """Rows whose largest score is masked (-inf or below the finite-mask threshold): all their keys are masked."""
    return row_max <= masked_score_threshold(input_dtype)


def fill_masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x with masked entries set to -inf, as a new tensor (x itself if there is no mask).

    A broadcast mask (key padding (bsz, 1, 1, src_len), causal (tgt_len, src_len)) is turned into a small additive
    -inf/0 tensor first: a broadcast add is 3-4x faster on CPU than masked_fill with a broadcast bool mask.
    """
    if mask is None:
        return x
    if mask.numel() < x.numel():
        return x + torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(mask, float("-inf"))
    return x.masked_fill(mask, float("-inf"))
def split_attn_mask(attn_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fairseq's attn_mask (bool, or float with -inf / large negative entries) -> (bool mask, additive part or None).

    The additive part is None when it is zero everywhere, which is only checked where reading is free (the CPU)."""
    if not attn_mask.dtype.is_floating_point:
        return attn_mask.to(torch.bool), None
    mask = attn_mask <= masked_score_threshold(attn_mask.dtype)  # -inf included
    additive = attn_mask.masked_fill(mask, 0.0)
    return mask, (additive if not reads_are_free(additive) or bool(additive.any()) else None)
