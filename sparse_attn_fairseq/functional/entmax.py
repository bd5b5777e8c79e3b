"""softmax, sparsemax, 1.5-entmax and alpha-entmax over one dimension, with shared masking semantics.

Correia, Niculae, Martins, "Adaptively Sparse Transformers", EMNLP 2019, sections 2-3. Every function:
masked entries (``mask`` True, or -inf / finite mask values in ``scores``) get exactly 0, a fully masked row gets all
zeros and zero gradient, fp16/bf16 inputs are computed in float32 and returned in their own dtype. Only ``dim=-1`` is
fast; other dims are moved to the end and back.
"""

from __future__ import annotations

from typing import Callable

import torch

from sparse_attn_fairseq.functional._entmax_autograd import (
    Entmax15Function,
    EntmaxAlphaFunction,
    SparsemaxFunction,
)
from sparse_attn_fairseq.functional.host import reads_are_free
from sparse_attn_fairseq.functional.masking import check_mask, dead_rows, fill_masked

AlphaLike = float | torch.Tensor


def softmax_masked(scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """p = exp(z) / sum exp(z) over unmasked entries; a fully masked row gives zeros (torch.softmax gives NaN).

    Args:
        scores: any shape, float dtype.
        mask: optional bool tensor broadcastable to scores, True = masked.
        dim: dimension to normalise over.

    Returns:
        Tensor like ``scores`` (same shape and dtype).
    """
    check_mask(scores, mask)
    x = fill_masked(scores, mask)
    dead = dead_rows(x.amax(dim=dim, keepdim=True), scores.dtype) if x.numel() else None
    # on the CPU the two fills are skipped when no row is dead; elsewhere asking would synchronise
    fill = dead is not None and (not reads_are_free(dead) or bool(dead.any()))
    if fill:
        x = x.masked_fill(dead, 0.0)  # avoid NaN in forward and backward, zeroed below
    half = scores.dtype in (torch.float16, torch.bfloat16)
    p = torch.softmax(x, dim=dim, dtype=torch.float32 if half else None).to(scores.dtype)
    return p.masked_fill(dead, 0.0) if fill else p


def sparsemax(scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """p = argmin_{p in simplex} ||p - z||^2 = (z - tau)_+ (Martins & Astudillo, ICML 2016); alpha-entmax at alpha = 2.

    Exact: Newton on the threshold is the active-set iteration and stops once the support no longer changes; equals
    the sort-based algorithm (``reference.sparsemax_reference``). Args/Returns as :func:`softmax_masked`.
    """
    check_mask(scores, mask)
    return _along_last_dim(lambda s, m: SparsemaxFunction.apply(s, m)[0], scores, mask, dim)


def entmax15(scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """p = ((z / 2 - tau)_+)^2, alpha-entmax at alpha = 1.5 (Peters, Niculae, Martins, ACL 2019).

    Newton on the threshold to floating-point precision (quadratic convergence, no approximation beyond rounding);
    equals the sort-based algorithm. Args/Returns as :func:`softmax_masked`.
    """
    check_mask(scores, mask)
    return _along_last_dim(lambda s, m: Entmax15Function.apply(s, m)[0], scores, mask, dim)


def entmax_alpha(
    scores: torch.Tensor, alpha: AlphaLike, mask: torch.Tensor | None = None, dim: int = -1
) -> torch.Tensor:
    """p_i = [(alpha - 1) z_i - tau]_+ ^ (1 / (alpha - 1)), sum p = 1 (Correia et al., EMNLP 2019, section 3).

    Equals argmax_{p in simplex} p.z + H_alpha(p) (Tsallis entropy); the float64 reference bisects for tau.
    alpha = 1 is softmax and alpha = 2 is sparsemax, exactly. Gradients flow to ``scores`` and, when it is a tensor
    that requires grad, to ``alpha`` (closed form; zero for rows whose alpha is exactly 1).

    Args:
        scores: (..., n) along ``dim``, float dtype.
        alpha: float, or tensor broadcastable to scores with size 1 along ``dim`` (one alpha per row, e.g.
            (num_heads, 1, 1) for scores (bsz, num_heads, tgt_len, src_len)).
        mask: optional bool tensor broadcastable to scores, True = masked.
        dim: dimension to normalise over.

    Returns:
        Tensor like ``scores``.

    Raises:
        ValueError: alpha outside [1, 2] (the message names the value) or of a shape that is not one per row. An
            alpha tensor off the CPU is checked on the device instead (reading it would synchronise): rows of an
            invalid alpha come out NaN.
    """
    check_mask(scores, mask)
    if isinstance(alpha, torch.Tensor):
        _check_alpha_tensor(alpha, scores, dim)
        return _along_last_dim(_entmax_alpha_tensor, scores, mask, dim, alpha)
    alpha = float(alpha)
    if not 1.0 <= alpha <= 2.0:
        raise ValueError(f"alpha must lie in [1, 2], got alpha={alpha!r}")
    if alpha == 1.0:
        return softmax_masked(scores, mask, dim)
    if alpha == 2.0:
        return sparsemax(scores, mask, dim)
    if alpha == 1.5:
        return entmax15(scores, mask, dim)
    return _along_last_dim(lambda s, m: EntmaxAlphaFunction.apply(s, alpha, m)[0], scores, mask, dim)


def _entmax_alpha_tensor(scores: torch.Tensor, mask: torch.Tensor | None, alpha: torch.Tensor) -> torch.Tensor:
    """Last-dim alpha-entmax with a per-row alpha tensor; rows with alpha exactly 1 take softmax."""
    alpha_c = alpha.to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
    if reads_are_free(alpha_c):
        if float(alpha_c.detach().min()) > 1.0:  # the common case: no softmax rows
            return EntmaxAlphaFunction.apply(scores, alpha_c, mask)[0]
        invalid = None  # checked on the host (_check_alpha_tensor)
    else:  # no host read: an alpha outside [1, 2] gives NaN rows, as the Triton kernel does
        invalid = (alpha_c < 1.0) | (alpha_c > 2.0) | alpha_c.isnan()
    is_one = alpha_c == 1.0
    # any valid value where alpha is 1 (softmax rows, replaced below) or invalid (NaN below)
    safe_alpha = alpha_c.masked_fill(is_one if invalid is None else is_one | invalid, 2.0)
    p = EntmaxAlphaFunction.apply(scores, safe_alpha, mask)[0]
    p = torch.where(is_one, softmax_masked(scores, mask).to(p.dtype), p)
    return p if invalid is None else p.masked_fill(invalid, float("nan"))


def _check_alpha_tensor(alpha: torch.Tensor, scores: torch.Tensor, dim: int) -> None:
    """Raise ValueError unless alpha is one value per row in [1, 2]."""
    check_alpha_shape(alpha, scores, dim)
    if alpha.numel() == 0 or not reads_are_free(alpha):  # off the CPU: checked on the device (NaN rows)
        return
    low, high = torch.aminmax(alpha.detach())  # one pass; NaN propagates into both
    if not (1.0 <= float(low) and float(high) <= 2.0):
        bad = alpha.detach()[(alpha.detach() < 1.0) | (alpha.detach() > 2.0) | alpha.detach().isnan()]
        raise ValueError(f"alpha must lie in [1, 2], got alpha={bad.flatten()[:8].tolist()} (first offending values)")


def check_alpha_shape(alpha: torch.Tensor, scores: torch.Tensor, dim: int = -1) -> None:
    """Raise ValueError unless alpha broadcasts to one value per row of ``scores`` along ``dim`` (no host sync)."""
    if alpha.ndim > scores.ndim:
        raise ValueError(f"alpha of shape {tuple(alpha.shape)} has more dims than scores {tuple(scores.shape)}")
    shape = (1,) * (scores.ndim - alpha.ndim) + tuple(alpha.shape)
    row_shape = list(scores.shape)
    row_shape[dim] = 1
    if any(a not in (1, r) for a, r in zip(shape, row_shape)):
        raise ValueError(
            f"alpha of shape {tuple(alpha.shape)} must broadcast to {tuple(row_shape)} (one alpha per row along dim)"
        )


def _along_last_dim(fn: Callable, scores: torch.Tensor, mask: torch.Tensor | None, dim: int, *alpha) -> torch.Tensor:
    """Run ``fn(scores, mask, *alpha)`` on the last dim: other dims are moved to the end and back."""
    if scores.ndim == 0:
        raise ValueError("scores must have at least one dimension")
    dim = dim % scores.ndim
    if dim == scores.ndim - 1:
        return _apply_cast(fn, scores, mask, *alpha)
    scores_t = scores.movedim(dim, -1)  # (..., n) with n = scores.shape[dim]
    mask_t = None if mask is None else mask.expand(scores.shape).movedim(dim, -1)
    alpha_t = tuple(a.reshape((1,) * (scores.ndim - a.ndim) + tuple(a.shape)).movedim(dim, -1) for a in alpha)
    return _apply_cast(fn, scores_t, mask_t, *alpha_t).movedim(-1, dim)


def _apply_cast(fn: Callable, scores: torch.Tensor, mask: torch.Tensor | None, *alpha) -> torch.Tensor:
    if not scores.dtype.is_floating_point:
        raise TypeError(f"scores must be a floating-point tensor, got {scores.dtype}")
    if scores.numel() == 0:  # empty batch or zero keys: nothing to normalise; keep the graph for backward
        return scores * 0.0
    return fn(scores, mask, *alpha).to(scores.dtype)  # fp16 / bf16 were computed in float32
