"""ReLA and adaptive span through ``torch.nn.attention.flex_attention`` on CUDA: fused, the score matrix never stored.

flex_attention computes softmax(score_mod(q.k)) v block by block, skipping the blocks its block mask leaves out.
Both methods fit it exactly:

* adaptive span with softmax (Sukhbaatar et al. 2019): weights p * m renormalised = softmax(s + log m), log m = -inf
  where the soft mask m is 0; the block mask leaves out key blocks beyond the largest span plus the ramp (the host
  bound of layers/adaptive_span.py: no sync);
* ReLA (Zhang et al. 2021): relu(s) v = (softmax(log relu(s)) v) * exp(lse), lse = log sum_j relu(s_j), -inf for a
  null row (its output is 0); with a span, relu(s) * m v likewise (ReLA does not renormalise).

Key padding and any attn_mask enter as -inf (a float attn_mask's finite part is added to the scores). Dropout on the
weights cannot be expressed: with attention dropout in training the dense cores run. flex_attention's backward runs
on CUDA only, so before a kind of call (method x dtype x head size) is first trusted on a device, one small problem
runs through flex and through the dense computation, forward and backward (q, k, v and the spans): if they differ,
or flex fails to compile, the core is off for the process, with one warning naming why, and the dense cores compute.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Optional

import torch
from torch import Tensor

from sparse_attn_fairseq.functional.masking import masked_score_threshold
from sparse_attn_fairseq.functional.span import keys_needed
from sparse_attn_fairseq.modules.attention_cores import AttentionCore, CoreResult, choose_core, register_core

_STATE: dict = {"error": None, "trusted": set(), "compiled": None}
DEVICES = ("cuda",)  # where flex runs forward and backward (its backward has no CPU implementation)
BLOCK = 128  # flex_attention's default block size
SELF_CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}  # relative, on a unit problem


def _flex():
    """flex_attention, compiled (its fused kernels) on CUDA; the eager one elsewhere (tests, forward only)."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def _compiled_flex():
    if _STATE["compiled"] is None:
        _STATE["compiled"] = torch.compile(_flex())
    return _STATE["compiled"]


def _kind(normalizer) -> Optional[str]:
    """"softmax" (with a span) or "rela", the normalizers flex computes; None for the others."""
    name = getattr(normalizer, "registry_name", None)
    return name if name in ("softmax", "rela") else None


class FlexCore(AttentionCore):
    """Adaptive span with softmax, and ReLA with or without a span, through flex_attention (see the module
    docstring). Needs CUDA, no weights returned or observed, no attention dropout, no relative positions."""

    name = "flex"

    def refusal(self, module, call):
        kind = _kind(module.normalizer)
        if kind is None:
            return f"normalizer is {getattr(module.normalizer, 'registry_name', type(module.normalizer).__name__)}"
        if kind == "softmax" and call.spans is None:
            return "softmax without a span (the fused core's)"
        if kind == "softmax" and not module.renormalize_span:
            return "a span without renormalisation"
        if call.q.device.type not in DEVICES:
            return f"flex_attention's backward runs on CUDA only, not {call.q.device.type}"
        if _STATE["error"]:
            return _STATE["error"]
        if call.need_weights or call.observe_weights:
            return "the weights are needed"
        if call.incremental:
            return "incremental decoding"
        if module.key_positions is not None:
            return "relative key positions"
        dropout = module.dropout_module
        if dropout.p > 0 and (module.training or dropout.apply_during_inference):
            return "attention dropout"
        if call.q.size(0) != call.k.size(0):
            return "keys shared by beams"
        return None

    def run(self, module, call):
        kind = _kind(module.normalizer)
        if call.q.is_cuda and not _trusted(kind, call.spans is not None, module.causal, call.q.dtype,
                                           call.q.size(-1), call.q.device):
            return choose_core(module, call).run(module, call)  # switched off: the next core that accepts the call
        flex = _compiled_flex() if call.q.is_cuda else _flex()
        out = flex_attention_call(flex, kind, call.q, call.k, call.v, call.spans, module.span, module.causal,
                                  call.key_padding_mask, call.attn_mask)
        return CoreResult(out.permute(2, 0, 1, 3).flatten(2), None)  # (tgt_len, bsz, embed_dim)


def flex_attention_call(flex, kind: str, q: Tensor, k: Tensor, v: Tensor, spans: Optional[Tensor], span,
                        causal: bool, key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor]) -> Tensor:
    """The attention of ``kind`` ("softmax" with a span, or "rela") with flex: q (bsz, H, T, d) pre-scaled, k and v
    (bsz, H, S, d), the queries being the last T keys; returns (bsz, H, T, d)."""
    tgt_len, src_len = q.size(2), k.size(2)
    offset = src_len - tgt_len
    padding = None if key_padding_mask is None else key_padding_mask.to(torch.bool)
    bias = None if attn_mask is None else _attn_mask_bias(attn_mask, q.dtype)
    ramp = float(span.ramp) if spans is not None else 1.0
    soft = None if spans is None else spans.to(torch.float32)
    dynamic = soft is not None and soft.ndim == 3

    def score_mod(score, b, h, q_idx, kv_idx):
        s = score if bias is None else score + bias[q_idx, kv_idx]
        if kind == "rela":
            s = torch.where(s > 0, torch.log(torch.where(s > 0, s, 1.0)), float("-inf"))
        if soft is not None:
            x = (q_idx + offset - kv_idx).to(torch.float32)
            future = x < 0
            dist = x if causal else x.abs()
            z = soft[b, h, q_idx] if dynamic else soft[h]
            m = ((ramp + z - dist) / ramp).clamp(0.0, 1.0)
            keep = (m > 0) & ~future if causal else m > 0
            s = torch.where(keep, s + torch.log(torch.where(keep, m, 1.0)).to(s.dtype), float("-inf"))
        if padding is not None:
            s = torch.where(padding[b, kv_idx], float("-inf"), s)
        return s

    reach = keys_needed(span.host_bound(), span.ramp, src_len) if spans is not None else src_len
    block_mask = _block_mask(tgt_len, src_len, offset, reach, causal and spans is not None, str(q.device))
    if kind == "rela":
        out, lse = _flex_with_lse(flex, q, k, v, score_mod, block_mask)
        scale = torch.where(lse > float("-inf"), lse.exp(), 0.0)  # null rows: 0
        return torch.where(scale[..., None] > 0, out * scale[..., None].to(out.dtype), 0.0)
    out = flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0)
    return out


def _flex_with_lse(flex, q, k, v, score_mod, block_mask):
    """flex's output and log-sum-exp (the newer ``return_aux`` where torch has it, else ``return_lse``)."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # torch < 2.9
        return flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0, return_lse=True)
    out, aux = flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0,
                    return_aux=AuxRequest(lse=True))
    return out, aux.lse


def _attn_mask_bias(attn_mask: Tensor, dtype) -> Tensor:
    """fairseq's (T, S) attn_mask as an additive bias: -inf where masked (at or below the masked-score threshold),
    plus the finite part of a float mask."""
    if attn_mask.dtype.is_floating_point:
        return attn_mask.to(dtype).masked_fill(attn_mask <= masked_score_threshold(attn_mask.dtype), float("-inf"))
    return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill_(attn_mask.to(torch.bool),
                                                                                           float("-inf"))


@functools.lru_cache(maxsize=32)
def _block_mask(tgt_len: int, src_len: int, offset: int, reach: int, causal: bool, device: str):
    """Blocks of (query, key) pairs within ``reach`` keys of each other (the span's band), key <= query if causal;
    None when that is every pair. The same for every batch and head: a pure function of its arguments, memoised."""
    if reach >= src_len and not causal:
        return None
    from torch.nn.attention.flex_attention import create_block_mask

    def band(b, h, q_idx, kv_idx):
        x = q_idx + offset - kv_idx
        inside = (x < reach) & (x > -reach)
        return inside & (x >= 0) if causal else inside

    return create_block_mask(band, None, None, tgt_len, src_len, device=device, BLOCK_SIZE=BLOCK)


def _trusted(kind: str, with_span: bool, causal: bool, dtype, head_dim: int, device) -> bool:
    """Trust flex for this kind of call once it matched the dense computation, forward and backward, on a small
    problem on this device (one synchronisation, the first time); else switch the core off, with one warning."""
    key = (kind, with_span, causal, dtype, head_dim, str(device))
    if key in _STATE["trusted"]:
        return True
    try:
        problem = _check_problem(kind, with_span, causal, dtype, head_dim, device)
        worst = max(_relative_error(a, b) for a, b in zip(*problem))
        if not worst <= SELF_CHECK_TOLERANCE.get(dtype, 1e-6):
            raise RuntimeError(f"its results differ from the dense computation by {worst:.2e} (relative)")
    except Exception as error:  # noqa: BLE001  (any failure of flex here means: do not use it)
        _STATE["error"] = f"flex_attention failed its check on {device} ({type(error).__name__}: {str(error)[:300]})"
        warnings.warn(f"sparse_attn_fairseq: the flex attention core is off: {_STATE['error']}. The dense cores "
                      "compute instead.", RuntimeWarning, stacklevel=4)
        return False
    _STATE["trusted"].add(key)
    return True


def _relative_error(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))


def _check_problem(kind, with_span, causal, dtype, head_dim, device):
    """(flex's out and gradients, the dense computation's) on a random problem of 2 x 2 heads x 40 keys."""
    from types import SimpleNamespace

    generator = torch.Generator(device=device).manual_seed(0)
    shape = (2, 2, 40, head_dim)
    q, k, v = (torch.randn(shape, generator=generator, device=device, dtype=dtype) / math.sqrt(head_dim) ** 0.5
               for _ in range(3))
    padding = torch.zeros(2, 40, dtype=torch.bool, device=device)
    padding[1, 30:] = True
    spans = torch.tensor([3.0, 11.0], device=device) if with_span else None
    span = SimpleNamespace(ramp=4, host_bound=lambda: 11.0)
    results = []
    for flex in (_compiled_flex(), None):
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        z = None if spans is None else spans.clone().requires_grad_()
        if flex is None:
            out = _dense(kind, *inputs, z, span.ramp, causal, padding)
        else:
            out = flex_attention_call(flex, kind, *inputs, z, span, causal, padding, None)
        grads = torch.autograd.grad((out.float() * torch.linspace(-1, 1, out.numel(), device=device)
                                     .view_as(out)).sum(), [*inputs] + ([z] if z is not None else []))
        results.append([out, *grads])
    return results


def _dense(kind, q, k, v, spans, ramp, causal, padding):
    """The same attention with the whole score matrix (the check's reference)."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2))  # (bsz, H, T, S)
    masked = padding[:, None, None, :]
    if spans is not None:
        x = torch.arange(q.size(2), device=q.device)[:, None] - torch.arange(k.size(2), device=q.device)
        dist = x.float() if causal else x.abs().float()
        m = ((ramp + spans[:, None, None] - dist) / ramp).clamp(0.0, 1.0)
        m = m.masked_fill(x < 0, 0.0) if causal else m
    if kind == "rela":
        weights = torch.relu(scores.masked_fill(masked, 0.0))
        weights = weights * m if spans is not None else weights
    else:
        weights = torch.softmax(scores.masked_fill(masked, float("-inf")), -1) * m
        weights = weights / weights.sum(-1, keepdim=True)
    return torch.matmul(weights, v.float()).to(q.dtype)


register_core(FlexCore(), before="banded_span")
