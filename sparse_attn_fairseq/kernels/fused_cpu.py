"""The fused CPU kernel of the entmax family (csrc/entmax_cpu.cpp): sparsemax, 1.5-entmax, fixed and learned alpha.

The C++ file defines the custom ops ``sparse_attn::entmax_forward(scores, alpha, alpha_repeat, masked_below)`` and
``sparse_attn::entmax_backward(grad, probs, alpha, alpha_repeat, alpha_grad)`` on (rows, n) float32 tensors; row r
takes ``alpha[(r // alpha_repeat) % len(alpha)]`` (per-head alpha without a copy per row). This module adds what torch.library needs for the ops to behave like built-in ones: fake (meta)
implementations, so they trace under torch.compile, and the autograd formula, so gradients reach the scores and
alpha. It is built by the package's install (``make setup``, ``pip install --no-build-isolation [-e] .``); when the
compiled module is absent or cannot load, one warning says so and the reference kernel computes everything.
"""

from __future__ import annotations

import importlib
import platform
import warnings
from typing import Optional

import torch

from sparse_attn_fairseq.functional.entmax import check_alpha_shape
from sparse_attn_fairseq.functional.masking import check_mask, fill_masked, masked_score_threshold
from sparse_attn_fairseq.kernels.registry import ALPHA_GRAD, Kernel, register_kernel

NAME = "fused_cpu"
OPS = "sparse_attn"
_FIXED_ALPHA = {"sparsemax": 2.0, "entmax15": 1.5}


def _load() -> Optional[str]:
    """Import the compiled ops; the reason they are unusable, or None."""
    if platform.machine() in ("x86_64", "AMD64") and torch.backends.cpu.get_cpu_capability() not in ("AVX2",
                                                                                                     "AVX512"):
        return f"this CPU lacks AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
    try:
        importlib.import_module("sparse_attn_fairseq._C")
    except (ImportError, OSError) as error:
        return (f"the compiled op is not built or does not load ({error}); build it with `make setup` or "
                "`pip install --no-build-isolation -e .`")
    _register_fake_and_autograd()
    return None


def _register_fake_and_autograd() -> None:
    torch.library.register_fake(f"{OPS}::entmax_forward")(
        lambda scores, alpha, alpha_repeat, masked_below: torch.empty_like(scores))
    torch.library.register_fake(f"{OPS}::entmax_backward")(
        lambda grad, probs, alpha, alpha_repeat, alpha_grad: (torch.empty_like(probs), probs.new_empty(probs.shape[0])))
    torch.library.register_autograd(f"{OPS}::entmax_forward", _backward, setup_context=_setup_context)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(output, inputs[1])
    ctx.alpha_repeat = inputs[2]


def _backward(ctx, grad):
    probs, alpha = ctx.saved_tensors
    alpha_grad = ctx.needs_input_grad[1]
    grad_scores, grad_rows = torch.ops.sparse_attn.entmax_backward(grad.contiguous(), probs, alpha, ctx.alpha_repeat,
                                                                   alpha_grad)
    if not alpha_grad:
        return grad_scores, None, None, None
    return grad_scores, grad_rows.view(-1, alpha.shape[0], ctx.alpha_repeat).sum((0, 2)), None, None


LOAD_ERROR = _load()
if LOAD_ERROR:
    warnings.warn(f"sparse_attn_fairseq: the fused CPU entmax kernel is unavailable: {LOAD_ERROR}. The reference "
                  "kernel (plain PyTorch, 5-6x slower on CPU) is used instead.", RuntimeWarning, stacklevel=2)


def fused_entmax(scores: torch.Tensor, mask: Optional[torch.Tensor], alpha) -> torch.Tensor:
    """alpha-entmax over the last dim with the compiled op; alpha a float or a tensor broadcastable to one value per
    row (in [1, 2]: the op checks every value). Semantics and dtypes as functional.entmax.entmax_alpha."""
    check_mask(scores, mask)
    if scores.ndim == 0:
        raise ValueError("scores must have at least one dimension")
    if scores.numel() == 0:
        return scores * 0.0
    x = fill_masked(scores.to(torch.float32), mask)  # (..., n); fp16/bf16 are computed in float32
    rows = x.reshape(-1, x.shape[-1])  # (rows, n)
    if isinstance(alpha, torch.Tensor):
        check_alpha_shape(alpha, scores)
        alpha_values, repeat = _alpha_layout(alpha.to(torch.float32), x.shape[:-1])
    else:
        if not 1.0 <= float(alpha) <= 2.0:
            raise ValueError(f"alpha must lie in [1, 2], got alpha={alpha!r}")
        alpha_values, repeat = torch.full((1,), float(alpha)), 1
    probs = torch.ops.sparse_attn.entmax_forward(rows, alpha_values, repeat, masked_score_threshold(scores.dtype))
    return probs.view(x.shape).to(scores.dtype)


def _alpha_layout(alpha: torch.Tensor, batch: torch.Size) -> tuple[torch.Tensor, int]:
    """alpha broadcastable to ``batch + (1,)`` as the op takes it: values (A,) and a repeat count, row r taking
    alpha[(r // repeat) % A]. Per-head alpha (H, 1, 1) over (bsz, H, T) rows is (H,) repeated T times, with no copy
    per row; other layouts are expanded to one value per row."""
    sizes = (1,) * (len(batch) + 1 - alpha.ndim) + tuple(alpha.shape)
    varying = [i for i, size in enumerate(sizes[:-1]) if size > 1]
    if not varying:
        return alpha.reshape(1), 1
    first, last = varying[0], varying[-1]
    if all(sizes[i] == batch[i] for i in range(first, last + 1)):
        return alpha.reshape(-1), max(1, torch.Size(batch[last + 1:]).numel())
    return alpha.expand(batch + (1,)).reshape(-1), 1


def _fused_normalize(normalizer: str, scores, mask, alpha):
    return fused_entmax(scores, mask, _FIXED_ALPHA.get(normalizer, alpha))


FUSED_CPU_KERNEL = register_kernel(Kernel(
    name=NAME,
    normalizers=frozenset(("sparsemax", "entmax15", "entmax_fixed", "entmax_alpha")),
    devices=frozenset(("cpu",)),
    dtypes=frozenset((torch.float16, torch.bfloat16, torch.float32)),
    features=frozenset((ALPHA_GRAD,)),
    fn=_fused_normalize,
    priority=10,
    unavailable=lambda: LOAD_ERROR,
))
