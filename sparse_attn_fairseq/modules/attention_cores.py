"""Attention cores: "compute the weights and mix the values" for :class:`SparseMultiheadAttention`.

One core per way of computing it, tried in registry order; the first that accepts a call runs it:

    fused        torch's scaled_dot_product_attention: softmax, no span, no relative positions, nobody needs the
                 weights (fairseq's need_weights) and no observer reads them; one fused op
    banded_span  adaptive span, self-attention over a band of keys (functional/banded.py): cost grows with the span
    dense_span   adaptive span over all keys: the span's soft mask for every query-key pair
    dense        scores -> masks -> normalizer (its kernel from the kernel registry) -> dropout -> mix values

A core reads the module's parts (normalizer, span, dropout, relative key positions) and never its projections or
cache: those are fairseq's contract and stay in the module. A new core is one class plus one ``register_core``.
Tensors: q (bsz, H, tgt_len, head_dim) pre-scaled, k and v (kv_bsz, H, src_len, head_dim), kv_bsz dividing bsz
(a sentence's beams share their cross-attention keys); the output is (tgt_len, bsz, embed_dim).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from sparse_attn_fairseq.functional.banded import (
    Band, band_gather_keys, band_gather_rows, band_mix, band_queries, band_scores, make_band, unband,
)
from sparse_attn_fairseq.functional.host import reads_are_free
from sparse_attn_fairseq.functional.masking import fill_masked, masked_score_threshold, split_attn_mask
from sparse_attn_fairseq.functional.span import keep_spans_in_graph, span_distances

_WIDEST_BAND = 1.5  # a full pass uses the band while it is narrower than this many sequence lengths


@dataclass
class AttentionCall:
    """One forward's inputs to a core, after projection, cache and memory."""

    q: Tensor
    k: Tensor
    v: Tensor
    key_padding_mask: Optional[Tensor]  # (kv_bsz, src_len), True = padding
    attn_mask: Optional[Tensor]  # (tgt_len, src_len), bool or float (-inf / large negative = masked)
    spans: Optional[Tensor]  # (H,) or (bsz, H, tgt_len) in tokens, or None
    need_weights: bool
    incremental: bool
    observe_weights: bool  # an observer will read the weights
    band: Optional[Band] = None  # set by the banded core's check


@dataclass
class CoreResult:
    attn: Tensor  # (tgt_len, bsz, embed_dim), before the output norm
    weights: Optional[Tensor]  # (bsz, H, tgt_len, src_len) when needed, else None
    observed: Optional[Tuple[Tensor, Optional[Tensor]]] = None  # (weights, excluded keys) of the real query rows


class AttentionCore:
    """Base: ``refusal`` says why the core cannot run a call (None: it can); ``run`` computes it."""

    name = ""

    def refusal(self, module: nn.Module, call: AttentionCall) -> Optional[str]:
        raise NotImplementedError

    def run(self, module: nn.Module, call: AttentionCall) -> CoreResult:
        raise NotImplementedError


_CORES: List[AttentionCore] = []


def register_core(core: AttentionCore, before: Optional[str] = None) -> AttentionCore:
    """Add ``core`` to the registry, last or just before the core named ``before``."""
    if any(c.name == core.name for c in _CORES):
        raise ValueError(f"attention core {core.name!r} is already registered")
    index = next((i for i, c in enumerate(_CORES) if c.name == before), len(_CORES))
    _CORES.insert(index, core)
    return core


def core_names() -> Tuple[str, ...]:
    return tuple(c.name for c in _CORES)


def choose_core(module: nn.Module, call: AttentionCall) -> AttentionCore:
    """The first registered core that accepts the call (``module.force_core`` names one to use instead)."""
    forced = getattr(module, "force_core", None)
    reasons = []
    for core in _CORES:
        if forced is not None and core.name != forced:
            continue
        reason = core.refusal(module, call)
        if reason is None:
            return core
        reasons.append(f"{core.name}: {reason}")
    raise RuntimeError("no attention core accepts this call: " + "; ".join(reasons))


# ----- shared tensor steps -----

def attention_scores(q: Tensor, k: Tensor) -> Tensor:
    """q.k (q pre-scaled) -> (bsz, H, tgt_len, src_len); keys shared by a sentence's beams broadcast over them."""
    bsz, kv_bsz = q.size(0), k.size(0)
    if bsz == kv_bsz:
        return batched_matmul(q, k.transpose(-1, -2))
    # Fold the beams into the query rows (as fairseq's einsum does): one matmul per sentence and head, and the keys
    # are never expanded to bsz copies (a broadcast matmul would copy them at every decoding step).
    scores = batched_matmul(_fold_beams(q, kv_bsz), k.transpose(-1, -2))  # (kv_bsz, H, beam * tgt_len, src_len)
    return _unfold_beams(scores, q.size(0), q.size(2))


def batched_matmul(a: Tensor, b: Tensor) -> Tensor:
    """(B, H, m, k) @ (B, H, k, n) -> (B, H, m, n) as one bmm over B * H (views where the layouts allow): torch.matmul
    gives the same numbers with several more tensor operations per call, which decoding pays at every step."""
    out = torch.bmm(a.reshape(-1, a.size(2), a.size(3)), b.reshape(-1, b.size(2), b.size(3)))
    return out.view(a.size(0), a.size(1), a.size(2), b.size(3))


def _fold_beams(x: Tensor, kv_bsz: int) -> Tensor:
    """(bsz, H, tgt_len, d) -> (kv_bsz, H, beam * tgt_len, d)."""
    beams = x.unflatten(0, (kv_bsz, -1))  # (kv_bsz, beam, H, tgt_len, d)
    return beams.transpose(1, 2).flatten(2, 3)


def _unfold_beams(x: Tensor, bsz: int, tgt_len: int) -> Tensor:
    """(kv_bsz, H, beam * tgt_len, d) -> (bsz, H, tgt_len, d)."""
    beam = bsz // x.size(0)
    return x.unflatten(2, (beam, tgt_len)).transpose(1, 2).flatten(0, 1)


def mask_scores(scores: Tensor, key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], kv_bsz: int
                ) -> Tuple[Tensor, Optional[Tensor]]:
    """Scores plus any additive (finite, non-masking) part of a float ``attn_mask``, and the bool mask (True =
    masked) broadcastable to scores (bsz, H, tgt_len, src_len)."""
    mask = None
    if attn_mask is not None:
        mask, additive = split_attn_mask(attn_mask)  # (tgt_len, src_len)
        if additive is not None:
            scores = scores + additive.to(scores.dtype)
    if key_padding_mask is not None:
        padding = key_padding_mask.to(torch.bool)  # (kv_bsz, src_len)
        bsz = scores.size(0)
        if bsz != kv_bsz:
            padding = padding.repeat_interleave(bsz // kv_bsz, dim=0)  # (bsz, src_len)
        padding = padding[:, None, None, :]  # (bsz, 1, 1, src_len)
        mask = padding if mask is None else mask | padding
    return scores, mask


def mix_values(probs: Tensor, v: Tensor) -> Tensor:
    """probs (bsz, H, tgt_len, src_len) x v (kv_bsz, H, src_len, head_dim) -> (tgt_len, bsz, embed_dim)."""
    bsz, kv_bsz = probs.size(0), v.size(0)
    if bsz == kv_bsz:
        attn = batched_matmul(probs, v)  # (bsz, H, tgt_len, head_dim)
    else:  # beams folded into the query rows, as in attention_scores
        attn = _unfold_beams(batched_matmul(_fold_beams(probs, kv_bsz), v), bsz, probs.size(2))
    return attn.permute(2, 0, 1, 3).flatten(2)


def _with_key_positions(module, q: Tensor, scores: Tensor) -> Tensor:
    if module.key_positions is None:
        return scores
    tgt_len, src_len = scores.shape[-2:]  # queries are the last tgt_len keys
    dist = span_distances(tgt_len, src_len, True, query_offset=src_len - tgt_len, device=scores.device)
    return scores + module.key_positions(q, dist, src_len)


def _stats_mask(call: AttentionCall, masked: Optional[Tensor], soft: Tensor) -> Optional[Tensor]:
    """Keys the weights exclude (masked, or span mask 0), for an observer; None when nobody observes."""
    if not call.observe_weights:
        return None
    return soft == 0 if masked is None else masked | (soft == 0)


def _finish(module, call: AttentionCall, weights: Tensor, mask: Optional[Tensor]) -> CoreResult:
    """Dropout, mix values; keep the weights if a caller or an observer needs them."""
    attn = mix_values(module.dropout_module(weights), call.v)
    return CoreResult(attn, weights if call.need_weights else None,
                      (weights, mask) if call.observe_weights else None)


# ----- the cores -----

class FusedSoftmaxCore(AttentionCore):
    """torch's scaled_dot_product_attention (its fused kernels); fully masked rows give zeros, as ours do."""

    name = "fused"

    def refusal(self, module, call):
        if getattr(module.normalizer, "registry_name", None) != "softmax":
            return f"normalizer is {getattr(module.normalizer, 'registry_name', type(module.normalizer).__name__)}"
        if call.spans is not None or module.key_positions is not None:
            return "adaptive span or relative positions"
        if call.need_weights or call.observe_weights:
            return "the weights are needed"
        return None

    def run(self, module, call):
        q, k, v = call.q, call.k, call.v
        bsz, kv_bsz, tgt_len = q.size(0), k.size(0), q.size(2)
        if bsz != kv_bsz:
            q = _fold_beams(q, kv_bsz)
        bias = _additive_mask(call, q.size(2), k.size(2), bsz // kv_bsz, q.dtype)
        dropout = module.dropout_module
        p = dropout.p if (module.training or dropout.apply_during_inference) else 0.0
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=1.0)
        if bsz != kv_bsz:
            out = _unfold_beams(out, bsz, tgt_len)
        return CoreResult(out.permute(2, 0, 1, 3).flatten(2), None)


def _additive_mask(call: AttentionCall, rows: int, src_len: int, beam: int, dtype) -> Optional[Tensor]:
    """-inf where masked (entries at or below the masked-score threshold count as masked, as for every other
    normalizer), plus the finite part of a float attn_mask: (kv_bsz or 1, 1, rows, src_len) or None. No host sync."""
    bias = None
    if call.attn_mask is not None:
        bias = _attn_mask_bias(call.attn_mask, dtype, beam)
    if call.key_padding_mask is not None:
        padding = torch.zeros(call.key_padding_mask.shape, dtype=dtype, device=call.k.device)
        padding = padding.masked_fill_(call.key_padding_mask.to(torch.bool), float("-inf"))[:, None, None, :]
        bias = padding if bias is None else bias + padding
    return bias


_BIAS_CACHE: dict = {}  # the last converted attn_mask: a decoder passes the same future mask to every layer


def _attn_mask_bias(mask: Tensor, dtype, beam: int) -> Tensor:
    """fairseq's (tgt_len, src_len) attn_mask as an additive bias, beams folded into the rows; cached by identity
    (not for tensors made in inference mode: they have no version counter, so a change in place would go unseen)."""
    cacheable = not mask.is_inference()
    key = (mask.data_ptr(), mask.shape, mask.stride(), mask.dtype, mask._version, mask.device, dtype, beam) \
        if cacheable else None
    cached = _BIAS_CACHE.get("bias") if cacheable and _BIAS_CACHE.get("key") == key else None
    if cached is not None:
        return cached
    if mask.dtype.is_floating_point:
        bias = mask.to(dtype).masked_fill(mask <= masked_score_threshold(mask.dtype), float("-inf"))
    else:
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask.to(torch.bool),
                                                                                     float("-inf"))
    bias = bias.repeat(beam, 1) if beam > 1 else bias  # beams folded into the query rows
    if cacheable:
        _BIAS_CACHE.update(key=key, bias=bias, mask=mask)  # holding the mask keeps its storage (and data_ptr) alive
    return bias


class BandedSpanCore(AttentionCore):
    """Adaptive span on a band of keys: keys beyond the largest span + ramp are never touched."""

    name = "banded_span"

    def refusal(self, module, call):
        if call.spans is None:
            return "no adaptive span"
        if not module.span_banding or call.incremental or module.memory_mode == "full":
            return "banding is off, or incremental, or the memory is attended in full"
        tgt_len, src_len = call.q.size(2), call.k.size(2)
        if tgt_len != src_len and module.memory is None:
            return "queries are not the keys"
        if _covering(call):
            return "the spans cover every key"
        band = make_band(tgt_len, module.span.keys_needed(src_len, call.spans), module.causal,
                         memory=src_len - tgt_len)
        # The full path builds the span mask over every query-key pair: ~3.5x plain attention at 2048 tokens, so a
        # band somewhat wider than the sequence still wins (measured: 1.1-1.3 lengths faster, 1.9 slower).
        if band.width >= _WIDEST_BAND * src_len:
            return "the band would be wider than the sequence"
        call.band = band
        return None

    def run(self, module, call):
        band, q, k, spans = call.band, call.q, call.k, call.spans
        scores = band_scores(q, k, band)  # (bsz, H, num_blocks, block, width)
        if module.key_positions is not None:  # distances are the same in every block
            scores = scores + module.key_positions(band_queries(q, band), band.distances(True, scores.device),
                                                   band.left + band.block)
        masked, bias = _band_key_bias(band, call.key_padding_mask, call.attn_mask, scores.dtype, scores.device)
        scores = scores.add_(bias)  # the matmul's output is not needed by its backward: add in place
        if spans.ndim == 3:  # dynamic (bsz, H, tgt_len) -> (bsz, H, num_blocks, block), zero for padded rows
            spans = nn.functional.pad(spans, (0, band.padded_len - band.length)).unflatten(-1, scores.shape[2:4])
        # the distances repeat in every block: a static mask is (H, block, width), broadcast over the blocks
        soft = module.span.mask_at(band.distances(module.causal, scores.device), module.causal, spans)
        soft = soft.unsqueeze(-3) if spans.ndim == 1 else soft  # (H, 1, block, W) or (bsz, H, nb, block, W)
        weights = module.span.normalize(module.normalizer, scores, soft, module.renormalize_span)
        attn = band_mix(module.dropout_module(weights), call.v, band).permute(2, 0, 1, 3).flatten(2)
        observed = _real_rows(weights, _stats_mask(call, masked, soft), band) if call.observe_weights else None
        full = unband(weights, band, k.size(2)) if call.need_weights else None  # (bsz, H, tgt_len, src_len)
        return CoreResult(attn, full, observed)


def _covering(call: AttentionCall) -> bool:
    """Every span reaches every key (z >= src_len - 1): the span mask is 1 wherever a key may be seen. Checked
    where reading the spans is free (the CPU); elsewhere the mask is applied (the same numbers, no sync)."""
    return reads_are_free(call.spans) and float(call.spans.detach().min()) >= call.k.size(2) - 1


def _band_key_bias(band: Band, key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], dtype, device
                   ) -> Tuple[Tensor, Tensor]:
    """Masked keys on the band, bool (1 or bsz, 1, num_blocks, block, width), and the additive bias: -inf there,
    plus any finite part of a float attn_mask. attn_mask and key_padding_mask are read on the band only."""
    masked = band.outside(device)  # (num_blocks, block, width)
    additive = None
    if attn_mask is not None:
        fill = float("-inf") if attn_mask.dtype.is_floating_point else True
        attn_masked, additive = split_attn_mask(band_gather_rows(attn_mask, band, fill))  # (padded_len, width)
        masked = masked | attn_masked.view_as(masked)
    if key_padding_mask is not None:
        padding = band_gather_keys(key_padding_mask.to(torch.bool), band, True)  # (bsz, padded_len, width)
        masked = masked | padding.view(-1, *masked.shape[-3:])  # (bsz, num_blocks, block, width)
    masked = masked.unsqueeze(-4)  # (1 or bsz, 1, num_blocks, block, width)
    bias = torch.zeros(masked.shape, dtype=dtype, device=device).masked_fill_(masked, float("-inf"))
    if additive is not None:
        bias = bias + additive.view(masked.shape[-3:]).to(dtype)
    return masked, bias


def _real_rows(weights: Tensor, mask: Optional[Tensor], band: Band) -> Tuple[Tensor, Optional[Tensor]]:
    """Banded weights and mask (.., num_blocks, block, width) without the padded query rows: (.., length, width)."""
    weights = weights.flatten(-3, -2)[..., : band.length, :]
    if mask is not None:
        mask = mask.expand(weights.shape[:-2] + mask.shape[-3:]).flatten(-3, -2)[..., : band.length, :]
    return weights, mask


class DenseSpanCore(AttentionCore):
    """Adaptive span over all keys: keys with span mask 0 are masked for the normalizer, the weights are multiplied
    by the soft mask and renormalised (exactly the paper's "mask after the softmax" for softmax)."""

    name = "dense_span"

    def refusal(self, module, call):
        return "no adaptive span" if call.spans is None else None

    def run(self, module, call):
        q, k, spans = call.q, call.k, call.spans
        scores = _with_key_positions(module, q, attention_scores(q, k))  # (bsz, H, tgt_len, src_len)
        scores, mask = mask_scores(scores, call.key_padding_mask, call.attn_mask, k.size(0))
        tgt_len, src_len = scores.shape[-2:]
        if _covering(call):  # the span mask is 1 on every key that may be seen: skip it
            mask = _future_mask(mask, tgt_len, src_len, scores.device) if module.causal else mask
            return _finish(module, call, keep_spans_in_graph(module.normalizer(scores, mask), spans), mask)
        # queries are the last tgt_len keys (self-attention; incremental: the cache ends at the current step)
        dist = span_distances(tgt_len, src_len, module.causal, query_offset=src_len - tgt_len, device=scores.device)
        soft = module.span.mask_at(dist, module.causal, spans)  # (H, T, S) or (bsz, H, T, S)
        weights = module.span.normalize(module.normalizer, fill_masked(scores, mask), soft, module.renormalize_span)
        return _finish(module, call, weights, _stats_mask(call, mask, soft))


def _future_mask(mask: Optional[Tensor], tgt_len: int, src_len: int, device) -> Optional[Tensor]:
    """``mask`` or-ed with the keys after each query (queries are the last tgt_len keys)."""
    if tgt_len == 1:
        return mask
    future = span_distances(tgt_len, src_len, True, query_offset=src_len - tgt_len, device=device) < 0
    return future if mask is None else mask | future  # (tgt_len, src_len)


class DenseCore(AttentionCore):
    """Scores, masks, the normalizer (any registered one, through its kernel), dropout, values."""

    name = "dense"

    def refusal(self, module, call):
        return "an adaptive span needs a span core" if call.spans is not None else None

    def run(self, module, call):
        if _beams_stay_folded(module, call):
            return _run_folded(module, call)
        scores = _with_key_positions(module, call.q, attention_scores(call.q, call.k))
        scores, mask = mask_scores(scores, call.key_padding_mask, call.attn_mask, call.k.size(0))
        return _finish(module, call, module.normalizer(scores, mask), mask)


def _beams_stay_folded(module, call: AttentionCall) -> bool:
    """Beams share their sentence's keys (cross-attention in beam search) and nothing needs per-beam masks: scores,
    weights and values can stay in the folded layout (kv_bsz, H, beam * tgt_len, .) from the scores to the mix."""
    return (call.q.size(0) != call.k.size(0) and call.attn_mask is None and module.key_positions is None
            and not call.observe_weights)


def _run_folded(module, call: AttentionCall) -> CoreResult:
    """The dense core with the beams folded into the query rows throughout: rows are normalised independently and
    alpha is per head, so the weights are those of the unfolded layout, without unfolding the scores, repeating the
    padding mask per beam and folding the weights back for the values."""
    bsz, tgt_len, kv_bsz = call.q.size(0), call.q.size(2), call.k.size(0)
    scores = batched_matmul(_fold_beams(call.q, kv_bsz), call.k.transpose(-1, -2))  # (kv_bsz, H, beam * tgt_len, S)
    mask = None if call.key_padding_mask is None else call.key_padding_mask.to(torch.bool)[:, None, None, :]
    weights = module.normalizer(scores, mask)
    attn = _unfold_beams(batched_matmul(module.dropout_module(weights), call.v), bsz, tgt_len)
    return CoreResult(attn.permute(2, 0, 1, 3).flatten(2),
                      _unfold_beams(weights, bsz, tgt_len) if call.need_weights else None)


for _core in (FusedSoftmaxCore(), BandedSpanCore(), DenseSpanCore(), DenseCore()):
    register_core(_core)
