"""The Triton kernel of the entmax family: sparsemax, 1.5-entmax, fixed and learned alpha, forward and backward (the
alpha gradient included), for CUDA tensors, with no host synchronisation.

The kernels (``_triton_entmax_jit.py``, imported at the first launch, so importing this package never imports
triton) solve each row's threshold on the device: Newton's method from a power-mean bound, stopped by a convergence
test on the device or after ``MAX_ITER`` steps (measured: at most 4 steps in float32 and 5 in float64 on the worst
rows built in tests/kernels/test_triton_kernels.py, alpha 1.001-2, ties, logits up to 1e4, rows of 1-16384 keys). Rows of at most
``MAX_TILE`` keys are held in registers, ``ROW_TILE // BLOCK`` rows per program; longer rows loop over chunks. The
backward reads the saved weights once and writes once. Scores in float32, fp16 or bf16 are computed in float32
(float64 in float64) and the weights returned in the scores' dtype; only the weights and alpha are saved.

Masking as everywhere (functional/masking.py): a bool mask broadcastable to the scores (read through its strides:
a key padding mask is never expanded) and scores at or below the masked-score threshold are masked; masked keys get
exactly 0, a fully masked row zeros and zero gradient. Alpha is checked on the device: a row whose alpha lies outside
[1, 2] comes out NaN (a host-side check would synchronise).

Availability (``unavailable()``): triton installed (3.6 or newer) and a CUDA device, or triton's interpreter
(``TRITON_INTERPRET=1`` set before this module is imported), which runs the same kernels on CPU tensors for the
tests; the kernel then takes CPU tensors when it is forced (``--attention-kernel triton``, ``kernel=``), never by
choice. A kernel that fails to compile makes the kernel unavailable with the reason; the registry then
warns once and the reference computes.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
from typing import Optional

import torch

from sparse_attn_fairseq.functional.entmax import check_alpha_shape
from sparse_attn_fairseq.functional.masking import check_mask, masked_score_threshold
from sparse_attn_fairseq.kernels.registry import (
    ALPHA_GRAD, Kernel, forget_choices, register_kernel, warn_unavailable,
)

NAME = "triton"
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MIN_TRITON = (3, 6)
GENERAL, SPARSEMAX, ENTMAX15 = 0, 1, 2  # the kernels' MODE
_MODES = {"sparsemax": SPARSEMAX, "entmax15": ENTMAX15, "entmax_fixed": GENERAL, "entmax_alpha": GENERAL}
# Tiles, per compute dtype (the ahead-of-time compile test, tests/kernels/test_triton_compile.py, checks every tile
# for register spills on sm_80 and sm_90): keys per row held in registers (longer rows loop over chunks of CHUNK
# keys), elements per program for short rows (ROW_TILE // BLOCK rows at a time), and elements per thread (num_warps
# = elements / (32 * this), 1 to 16).
MAX_TILE = {torch.float32: 8192, torch.float64: 2048}
CHUNK = 2048
ROW_TILE = {torch.float32: 2048, torch.float64: 1024}
ELEMENTS_PER_THREAD = {torch.float32: 4, torch.float64: 2}
MAX_ROWS = 32
# Newton stops once every row's step is below TOL relative to d0 (quadratic convergence: the next step would be at
# the dtype's precision), or after MAX_ITER steps.
TOL = {torch.float32: 2.0**-20, torch.float64: 1e-13}
MAX_ITER = {torch.float32: 20, torch.float64: 30}

_STATE: dict = {"error": None, "jit": None}


def unavailable() -> Optional[str]:
    """Why the kernel cannot run in this process, or None."""
    if _STATE["error"]:
        return _STATE["error"]
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (torch's CUDA wheels bring it; or pip install triton)"
    version = importlib.metadata.version("triton")
    if tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) < MIN_TRITON:
        return f"triton {version} is older than {'.'.join(map(str, MIN_TRITON))}"
    if not INTERPRET and not torch.cuda.is_available():
        return "no CUDA device in this process"
    return None


def _jit():
    """The kernels module, imported at the first launch."""
    if _STATE["jit"] is None:
        _STATE["jit"] = importlib.import_module("sparse_attn_fairseq.kernels._triton_entmax_jit")
    return _STATE["jit"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def launch_config(n: int, dtype: torch.dtype) -> dict:
    """Tile of a row of ``n`` keys: BLOCK keys, ROWS rows per program, num_warps, and whether the row is chunked."""
    compute = _compute_dtype(dtype)
    if n > MAX_TILE[compute]:
        block, rows, chunked = CHUNK, 1, True
    else:
        block, chunked = max(16, _next_power_of_two(n)), False
        rows = max(1, min(MAX_ROWS, ROW_TILE[compute] // block))
    warps = _warps(rows * block, compute)
    # every register an SM can give each thread of one program: left to itself, ptxas sometimes caps a kernel at
    # half of that and spills (seen for float64 tiles of 16 warps at 64 registers)
    return {"BLOCK": block, "ROWS": rows, "num_warps": warps, "maxnreg": min(255, 65536 // (32 * warps)),
            "chunked": chunked}


def launch_configs(dtype: torch.dtype) -> list:
    """Every tile the launcher can choose for scores of ``dtype`` (for the compile test)."""
    lengths = [1 << k for k in range(4, MAX_TILE[_compute_dtype(dtype)].bit_length())] + [CHUNK + 1 + MAX_TILE[
        _compute_dtype(dtype)]]
    return [launch_config(n, dtype) for n in lengths]


def _warps(elements: int, compute: torch.dtype) -> int:
    return max(1, min(16, elements // (32 * ELEMENTS_PER_THREAD[compute])))


def _row_strides(t: torch.Tensor, row_ndim: int):
    """``t``, whose first ``row_ndim`` dims are the rows, and the strides of the three row dims (D0, D1, D2) that the
    kernels index. More than three row dims are merged into D0, which needs their strides to chain (else ``t`` is
    copied)."""
    sizes, strides = t.shape[:row_ndim], t.stride()[:row_ndim]
    if row_ndim <= 3:
        return t, (0,) * (3 - row_ndim) + tuple(strides)
    merged = [(st, sz) for st, sz in zip(strides[:-2], sizes[:-2]) if sz != 1]
    if any(merged[i][0] != merged[i + 1][0] * merged[i + 1][1] for i in range(len(merged) - 1)):
        t = t.contiguous()
        return _row_strides(t, row_ndim)
    return t, (merged[-1][0] if merged else 0,) + tuple(strides[-2:])


def _row_dims(row_shape: torch.Size):
    """(D1, D2) of the rows viewed as (D0, D1, D2)."""
    dims = (1, 1) + tuple(row_shape)
    return dims[-2], dims[-1]


@functools.lru_cache(maxsize=64)
def _alpha_tensor(alpha: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One shared, never written one-element tensor per fixed alpha (made outside inference mode: autograd may save
    it for a later training step's backward)."""
    with torch.inference_mode(False):
        return torch.full((1,), alpha, dtype=dtype, device=device)


def _forward(scores: torch.Tensor, alpha: Optional[torch.Tensor], mask: Optional[torch.Tensor], mode: int,
             iterations: Optional[torch.Tensor] = None, config: Optional[dict] = None) -> torch.Tensor:
    """Weights of the rows of ``scores`` (..., n) in its dtype; ``iterations`` (int32, one per row) receives the
    Newton steps each row's tile took."""
    x = scores.contiguous()
    n, row_shape = x.shape[-1], x.shape[:-1]
    n_rows, compute = row_shape.numel(), _compute_dtype(x.dtype)
    config = config or launch_config(n, x.dtype)
    p = torch.empty_like(x)
    alpha_rows, alpha_strides = _row_strides(alpha.expand(row_shape + (1,)), len(row_shape)) if alpha is not None \
        else (x, (0, 0, 0))
    if mask is not None:
        flags, mask_strides = _row_strides(mask.expand(x.shape).view(torch.uint8), len(row_shape))
        mask_strides += (flags.stride(-1),)
    else:
        flags, mask_strides = x, (0, 0, 0, 0)
    jit = _jit()
    kernel = jit.entmax_fwd_chunked if config["chunked"] else jit.entmax_fwd
    kernel[(_cdiv(n_rows, config["ROWS"]),)](
        x, p, alpha_rows, flags, x if iterations is None else iterations, n_rows, n, *_row_dims(row_shape),
        *alpha_strides, *mask_strides, masked_score_threshold(x.dtype), TOL[compute],
        MODE=mode, HAS_MASK=mask is not None, F64=compute == torch.float64, COUNT_ITERS=iterations is not None,
        MAX_ITER=MAX_ITER[compute], ROWS=config["ROWS"], BLOCK=config["BLOCK"], num_warps=config["num_warps"],
        maxnreg=config["maxnreg"],
    )
    return p


def _backward(grad: torch.Tensor, p: torch.Tensor, alpha: Optional[torch.Tensor], mode: int, alpha_grad: bool,
              config: Optional[dict] = None):
    """(dL/dscores like p, per-row dL/dalpha of shape p.shape[:-1] + (1,) or None)."""
    g = grad.contiguous()
    n, row_shape = p.shape[-1], p.shape[:-1]
    n_rows, compute = row_shape.numel(), _compute_dtype(p.dtype)
    config = config or launch_config(n, p.dtype)
    dx = torch.empty_like(p)
    dalpha = torch.empty(row_shape + (1,), dtype=compute, device=p.device) if alpha_grad else None
    alpha_rows, alpha_strides = _row_strides(alpha.expand(row_shape + (1,)), len(row_shape)) if alpha is not None \
        else (p, (0, 0, 0))
    jit = _jit()
    kernel = jit.entmax_bwd_chunked if config["chunked"] else jit.entmax_bwd
    kernel[(_cdiv(n_rows, config["ROWS"]),)](
        g, p, alpha_rows, dx, p if dalpha is None else dalpha, n_rows, n, *_row_dims(row_shape), *alpha_strides,
        MODE=mode, ALPHA_GRAD=alpha_grad, F64=compute == torch.float64, ROWS=config["ROWS"],
        BLOCK=config["BLOCK"], num_warps=config["num_warps"], maxnreg=config["maxnreg"],
    )
    return dx, dalpha


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _TritonEntmax(torch.autograd.Function):
    """forward(scores, alpha, mask, mode) -> weights; alpha a tensor broadcastable to one value per row, or None
    (sparsemax, 1.5-entmax). Saves the weights and alpha."""

    @staticmethod
    def forward(scores, alpha, mask, mode):
        return _launch(_forward, _torch_forward, scores, alpha, mask, mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, alpha, _, mode = inputs
        ctx.mode = mode
        ctx.save_for_backward(output, alpha)

    @staticmethod
    def backward(ctx, grad):
        p, alpha = ctx.saved_tensors
        needs_alpha = ctx.needs_input_grad[1]
        dx, dalpha = _launch(_backward, _torch_backward, grad, p, alpha, ctx.mode, needs_alpha)
        grad_alpha = dalpha.sum_to_size(alpha.shape).to(alpha.dtype) if needs_alpha else None
        return dx if ctx.needs_input_grad[0] else None, grad_alpha, None, None


def _launch(step, fallback, *args):
    """Run a forward or backward launch; a kernel that fails to compile makes this kernel unavailable (the registry
    then chooses the reference) and this call is computed by ``fallback``, the plain PyTorch formula."""
    try:
        return step(*args)
    except Exception as error:  # noqa: BLE001  (only triton's own compile errors are caught, see below)
        if INTERPRET or type(error).__module__.split(".")[0] != "triton" or "Interpreter" in type(error).__name__:
            raise
        _STATE["error"] = f"its kernels failed to compile here ({type(error).__name__}: {str(error)[:300]})"
        forget_choices()
        warn_unavailable(NAME, _STATE["error"], "the entmax family on CUDA")
        return fallback(*args)


def _torch_forward(scores, alpha, mask, mode):
    from sparse_attn_fairseq.functional.entmax import entmax15, entmax_alpha, sparsemax

    with torch.no_grad():
        if mode == SPARSEMAX:
            return sparsemax(scores, mask)
        if mode == ENTMAX15:
            return entmax15(scores, mask)
        return entmax_alpha(scores, alpha.to(_compute_dtype(scores.dtype)), mask)


def _torch_backward(grad, p, alpha, mode, alpha_grad):
    """The closed-form backward in plain PyTorch (the fallback of a kernel that failed to compile)."""
    from sparse_attn_fairseq.functional._entmax_autograd import _alpha_grad, support_mean

    g, q = grad.to(_compute_dtype(p.dtype)), p.to(_compute_dtype(p.dtype))
    a1 = (torch.ones((), dtype=q.dtype, device=q.device) if mode == SPARSEMAX
          else torch.full((), 0.5, dtype=q.dtype, device=q.device) if mode == ENTMAX15 else alpha.to(q.dtype) - 1)
    u = torch.where(q > 0, q.clamp_min(torch.finfo(q.dtype).tiny) ** (1 - a1), torch.zeros_like(q))
    g_bar = support_mean(u, g)
    dalpha = _alpha_grad(q, g, g_bar, a1 + 1, torch.empty_like(q)) if alpha_grad else None
    return ((g - g_bar) * u).to(p.dtype), dalpha


def triton_entmax(scores: torch.Tensor, mask: Optional[torch.Tensor] = None, alpha=1.5, mode: int = GENERAL
                  ) -> torch.Tensor:
    """alpha-entmax over the last dim with the Triton kernels (semantics and dtypes as functional.entmax).

    Args:
        scores: (..., n) float tensor (CUDA; CPU under triton's interpreter).
        mask: optional bool tensor broadcastable to scores, True = masked.
        alpha: a float in [1, 2] or a tensor broadcastable to scores.shape[:-1] + (1,), differentiable (GENERAL).
        mode: GENERAL, SPARSEMAX (alpha = 2) or ENTMAX15 (alpha = 1.5; ``alpha`` is then ignored).

    Raises:
        ValueError: a float alpha outside [1, 2], an alpha tensor of the wrong shape, 0-dim scores.
        TypeError: integer scores, or a mask that is not bool.
    """
    check_mask(scores, mask)
    if scores.ndim == 0:
        raise ValueError("scores must have at least one dimension")
    if not scores.dtype.is_floating_point:
        raise TypeError(f"scores must be a floating-point tensor, got {scores.dtype}")
    if mode != GENERAL:
        alpha = None
    elif isinstance(alpha, torch.Tensor):
        check_alpha_shape(alpha, scores)
    else:
        value = float(alpha)
        if not 1.0 <= value <= 2.0:
            raise ValueError(f"alpha must lie in [1, 2], got alpha={alpha!r}")
        if value in (1.5, 2.0):  # the exact closed-form kernels
            return triton_entmax(scores, mask, None, ENTMAX15 if value == 1.5 else SPARSEMAX)
        alpha = _alpha_tensor(value, scores.device, _compute_dtype(scores.dtype))
    if scores.numel() == 0:
        return scores * 0.0
    return _TritonEntmax.apply(scores, alpha, mask, mode)


def _triton_normalize(normalizer: str, scores, mask, alpha):
    return triton_entmax(scores, mask, alpha, _MODES[normalizer])


TRITON_KERNEL = register_kernel(Kernel(
    name=NAME,
    normalizers=frozenset(_MODES),
    devices=frozenset(("cuda",)),
    dtypes=frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64)),
    features=frozenset((ALPHA_GRAD,)),
    fn=_triton_normalize,
    priority=20,
    unavailable=unavailable,
    forced_devices=frozenset(("cpu",)) if INTERPRET else frozenset(),  # the interpreter, for the tests
))
