"""The fused CPU kernel of the entmax family (csrc/): sparsemax, 1.5-entmax, fixed and learned alpha.

The C++ files define the custom ops ``sparse_attn::entmax_forward(scores, alpha, mask, masked_below)`` and
``sparse_attn::entmax_backward(grad, probs, alpha, alpha_grad)`` on float32 scores (..., n), alpha broadcastable to
one value per row and an optional bool mask broadcastable to the scores, with their autograd formula (in C++). This
module adds the fake (meta) implementations, so they trace under torch.compile. The ops are built by the package's
install (``make setup``, ``pip install --no-build-isolation [-e] .``); when the compiled module is absent or cannot
load, one warning says so and the reference kernel computes everything.
"""

from __future__ import annotations

import functools
import importlib
import platform
import warnings
from typing import Optional

import torch

from sparse_attn_fairseq.functional.entmax import check_alpha_shape
from sparse_attn_fairseq.functional.masking import check_mask, masked_score_threshold
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
    _register_fakes()
    return None


def _register_fakes() -> None:
    torch.library.register_fake(f"{OPS}::entmax_forward")(
        lambda scores, alpha, mask, masked_below: torch.empty_like(scores))
    torch.library.register_fake(f"{OPS}::entmax_backward")(
        lambda grad, probs, alpha, alpha_grad: (torch.empty_like(probs), probs.new_empty(probs.shape[:-1] + (1,))))


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
    if isinstance(alpha, torch.Tensor):
        check_alpha_shape(alpha, scores)
        alpha = alpha.to(torch.float32)
    else:
        if not 1.0 <= float(alpha) <= 2.0:
            raise ValueError(f"alpha must lie in [1, 2], got alpha={alpha!r}")
        alpha = _scalar_alpha(float(alpha))
    if scores.numel() == 0:
        return scores * 0.0
    x = scores if scores.dtype == torch.float32 else scores.to(torch.float32)  # fp16/bf16: computed in float32
    probs = torch.ops.sparse_attn.entmax_forward(x, alpha, mask, masked_score_threshold(scores.dtype))
    return probs if scores.dtype == torch.float32 else probs.to(scores.dtype)


@functools.lru_cache(maxsize=64)
def _scalar_alpha(alpha: float) -> torch.Tensor:
    """One shared, never written tensor per fixed alpha; made outside inference mode even when first asked for inside
    it, since autograd cannot save an inference tensor for a later training step's backward."""
    with torch.inference_mode(False):
        return torch.full((1,), alpha)


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
    warns_when_unavailable=False,  # warned at import
))
