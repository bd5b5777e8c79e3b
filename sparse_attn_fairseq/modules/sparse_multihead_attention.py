"""One fairseq attention module for every normalizer: softmax, sparsemax, entmax (fixed or learned alpha), ReLA.

It honours fairseq 0.12.2's ``MultiheadAttention`` contract (forward signature and return, key padding and attention
masks, incremental state, ``reorder_incremental_state``, cross-attention keys shared across a sentence's beams via
``set_beam_size``, q_proj/k_proj/v_proj/out_proj names) so fairseq's layers, generator and checkpoints work unchanged.
It never takes torch's fused softmax path (``F.multi_head_attention_forward``, ``scaled_dot_product_attention``): the
normalizer is the one chosen from the registry. The forward reads as named steps:

    project -> cache -> scores -> mask -> normalize -> span -> dropout -> mix values -> output norm -> out_proj

With an adaptive span (Sukhbaatar et al., ACL 2019) keys whose span mask m is 0 are masked for the normalizer, the
weights are multiplied by m and renormalised. For softmax (and ReLA) this equals the paper's "mask after the
softmax" exactly; for entmax it defines entmax over the keys within the span. Either way keys outside the layer's
largest span + ramp never matter, so self-attention is computed on a band of keys (functional/banded.py) and the
incremental cache keeps only that many keys: cost and generation memory grow with the span, not the length.

Streaming language models add two things (both set by the decoder): a memory (modules/stream_memory.py) of the
keys and values of the tokens before the current block, prepended to the block's own and trimmed to what the spans
reach, and relative key positions (layers/key_positions.py), a score term q . e_d per query-key distance d.

Cached keys and values have fairseq's layout (kv_bsz, num_heads, src_len, head_dim).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from fairseq.incremental_decoding_utils import with_incremental_state
from fairseq.modules.fairseq_dropout import FairseqDropout
from fairseq.modules.multihead_attention import MultiheadAttention
from fairseq.modules.quant_noise import quant_noise
from torch import Tensor, nn

from sparse_attn_fairseq.functional.banded import (
    Band, band_gather_keys, band_gather_rows, band_mix, band_queries, band_scores, make_band, unband,
)
from sparse_attn_fairseq.functional.masking import fill_masked, split_attn_mask
from sparse_attn_fairseq.functional.span import keep_spans_in_graph, keys_needed, span_distances
from sparse_attn_fairseq.modules.attention_stats import log_attention_stats, log_span_stats
from sparse_attn_fairseq.modules.stream_memory import prepend_memory

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]
_WIDEST_BAND = 1.5  # a full pass uses the band while it is narrower than this many sequence lengths
_MEMORY_GRAIN = 64  # memories are trimmed to a multiple of this many keys: slack for spans that grow while training
MEMORY_MODES = ("span", "full")  # trim the memory to the spans (the paper's adapt-span cache), or keep S keys


@with_incremental_state
class SparseMultiheadAttention(nn.Module):
    """Multi-head attention whose score normalizer is a module (Correia et al., EMNLP 2019; Zhang et al., EMNLP 2021).

    Args:
        embed_dim: model dimension (query size and output size).
        num_heads: number of heads; must divide embed_dim.
        normalizer: maps scores (bsz, num_heads, tgt_len, src_len) and a bool mask (True = masked) to weights, e.g.
            ``layers.normalizers.build_normalizer("entmax_alpha", num_heads)``.
        kdim, vdim: key and value input sizes (default embed_dim).
        dropout: attention dropout on the weights.
        bias: biases of the four projections.
        self_attention, encoder_decoder_attention: fairseq's two modes (at most one is True).
        output_norm: optional module on the concatenated head outputs (tgt_len, bsz, embed_dim), before out_proj
            (ReLA's RMSNorm).
        span: optional adaptive span (``layers.adaptive_span.AdaptiveSpan``), self-attention only: keys outside it
            are masked for the normalizer, weights are multiplied by its soft mask, full passes run on a band of keys
            and the incremental cache is trimmed to it.
        causal: positions of a span are causal (decoder self-attention) rather than symmetric.
        renormalize_span: divide span-masked rows by their sum (off for unnormalised ReLA weights).
        q_noise, qn_block_size: fairseq's quant-noise on the projections.
        stats_key: when set, full (non-incremental) forwards log mean alpha and the zero fraction under this name.

    Raises:
        ValueError: embed_dim not divisible by num_heads, or both attention modes set.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        normalizer: nn.Module,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        dropout: float = 0.0,
        bias: bool = True,
        self_attention: bool = False,
        encoder_decoder_attention: bool = False,
        output_norm: Optional[nn.Module] = None,
        span: Optional[nn.Module] = None,
        causal: bool = False,
        renormalize_span: bool = True,
        q_noise: float = 0.0,
        qn_block_size: int = 8,
        stats_key: Optional[str] = None,
    ):
        super().__init__()
        problems = []
        if num_heads < 1 or embed_dim % num_heads:
            problems.append(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if self_attention and encoder_decoder_attention:
            problems.append("self_attention and encoder_decoder_attention are exclusive")
        if self_attention and (kdim or embed_dim) != embed_dim or self_attention and (vdim or embed_dim) != embed_dim:
            problems.append("self-attention needs kdim == vdim == embed_dim")
        if span is not None and not self_attention:
            problems.append("an adaptive span needs self-attention (cross-attention has no shared position axis)")
        if problems:
            raise ValueError("SparseMultiheadAttention: " + "; ".join(problems))
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.scaling = self.head_dim**-0.5
        self.self_attention, self.encoder_decoder_attention = self_attention, encoder_decoder_attention
        self.q_proj = quant_noise(nn.Linear(embed_dim, embed_dim, bias=bias), q_noise, qn_block_size)
        self.k_proj = quant_noise(nn.Linear(self.kdim, embed_dim, bias=bias), q_noise, qn_block_size)
        self.v_proj = quant_noise(nn.Linear(self.vdim, embed_dim, bias=bias), q_noise, qn_block_size)
        self.out_proj = quant_noise(nn.Linear(embed_dim, embed_dim, bias=bias), q_noise, qn_block_size)
        self.normalizer, self.output_norm, self.span = normalizer, output_norm, span
        self.causal, self.renormalize_span = causal, renormalize_span
        self.dropout_module = FairseqDropout(dropout, module_name=self.__class__.__name__)
        self.beam_size = 1
        self.stats_key = stats_key
        self.layer_index: Optional[int] = None  # set by the encoder/decoder: per-layer span log keys
        self.span_banding = True  # False forces the full computation (tests and benchmarks compare the two)
        self.memory = None  # a modules.stream_memory.MemorySlot, lent for one streaming forward
        self.memory_mode = "span"  # see MEMORY_MODES; "full" also computes every memory key (Transformer-XL's cost)
        self.reset_parameters()

    @property
    def key_positions(self) -> Optional[nn.Module]:
        """Relative key positions (layers/key_positions.KeyPositions) or None; shared by a decoder's layers, so held
        without registering it here (its owner saves and moves it)."""
        return self.__dict__.get("_key_positions")

    def use_key_positions(self, key_positions: Optional[nn.Module]) -> None:
        """Add the score term q . e_d of ``key_positions`` (owned elsewhere) for every query-key distance d."""
        self.__dict__["_key_positions"] = key_positions

    def reset_parameters(self) -> None:
        """fairseq's initialisation: scaled Xavier when q, k, v share a size, zero output bias."""
        gain = 1 / math.sqrt(2) if self.kdim == self.vdim == self.embed_dim else 1.0
        for proj in (self.k_proj, self.v_proj, self.q_proj):
            nn.init.xavier_uniform_(proj.weight, gain=gain)
        nn.init.xavier_uniform_(self.out_proj.weight)
        if self.out_proj.bias is not None:
            nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor],
        value: Optional[Tensor],
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask: Optional[Tensor] = None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """query (tgt_len, bsz, embed_dim) -> (out (tgt_len, bsz, embed_dim), weights or None).

        weights are the normalised (sparse) probabilities before dropout: (bsz, tgt_len, src_len) averaged over heads,
        or (num_heads, bsz, tgt_len, src_len) with ``need_head_weights``. With ``before_softmax`` the masked scores
        (bsz * num_heads, tgt_len, src_len) and values (kv_bsz * num_heads, src_len, head_dim) are returned instead.
        """
        tgt_len, bsz, _ = query.shape
        saved_state = self._get_input_buffer(incremental_state) if incremental_state is not None else None
        if saved_state is not None and static_kv and "prev_key" in saved_state:
            key = value = None  # static keys of this sentence are cached: skip their projection
        q, k, v, key_padding_mask = self._project(query, key, value, key_padding_mask)
        spans = self._spans(query, key_padding_mask)  # (num_heads,) or (bsz, num_heads, tgt_len) in tokens, or None
        if saved_state is not None:
            k, v, key_padding_mask = self._update_cache(incremental_state, saved_state, k, v, key_padding_mask, static_kv)
        elif self.memory is not None:  # streaming: the memory's keys come first; store what the next block reaches
            k, v, key_padding_mask, attn_mask = prepend_memory(self.memory.read(), k, v, key_padding_mask, attn_mask)
            self.memory.write(k, v, key_padding_mask, self._memory_keys(k.size(2)))
        if before_softmax:
            return self._before_softmax_output(*self._mask(self._scores(q, k), key_padding_mask, attn_mask, k.size(0)),
                                               v)
        covering = spans is not None and float(spans.detach().min()) >= k.size(2) - 1  # m = 1 on every key
        band = None if covering else self._band(spans, tgt_len, k.size(2), incremental_state)
        if band is None:
            weights, mask = self._full_weights(q, k, key_padding_mask, attn_mask, spans, covering)  # (bsz, H, T, S)
        else:
            weights, mask = self._band_weights(q, k, key_padding_mask, attn_mask, spans, band)  # (bsz, H, nb, block, W)
        if self.stats_key is not None and incremental_state is None:
            self._log_stats(*self._real_rows(weights, mask, band), spans)
        probs = self.dropout_module(weights)
        attn = self._mix_values(probs, v) if band is None else band_mix(probs, v, band).permute(2, 0, 1, 3).flatten(2)
        if self.output_norm is not None:  # attn: (tgt_len, bsz, embed_dim)
            attn = self.output_norm(attn)
        if band is not None and (need_weights or need_head_weights):
            weights = unband(weights, band, k.size(2))  # (bsz, H, tgt_len, src_len)
        return self.out_proj(attn), self._returned_weights(weights, need_weights or need_head_weights, need_head_weights)

    # ----- adaptive span: spans, band choice, full and banded weights -----

    def _spans(self, query: Tensor, padding: Optional[Tensor] = None) -> Optional[Tensor]:
        """This forward's spans; in training the span penalty's gradient is attached to them (layers/adaptive_span),
        averaged over the real query tokens (self-attention: the key padding mask is the query's)."""
        if self.span is None:
            return None
        spans = self.span.spans(query if self.span.dynamic else None)  # (H,) or (bsz, H, tgt_len)
        if self.training:
            self.span.attach_penalty(spans, padding=padding if padding is not None and
                                     padding.shape == (query.size(1), query.size(0)) else None)
        return spans

    def _band(self, spans: Optional[Tensor], tgt_len: int, src_len: int, incremental_state) -> Optional[Band]:
        """The band of keys a full self-attention pass needs (over the memory too), or None where the full
        computation is used."""
        if spans is None or not self.span_banding or incremental_state is not None or self.memory_mode == "full":
            return None
        if tgt_len != src_len and self.memory is None:
            return None
        band = make_band(tgt_len, self.span.keys_needed(src_len, spans), self.causal, memory=src_len - tgt_len)
        # The full path builds the span mask over every query-key pair: ~3.5x plain attention at 2048 tokens, so a
        # band somewhat wider than the sequence still wins (measured: 1.1-1.3 lengths faster, 1.9 slower).
        return band if band.width < _WIDEST_BAND * src_len else None

    def _full_weights(self, q: Tensor, k: Tensor, key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor],
                      spans: Optional[Tensor], covering: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """Weights (bsz, H, tgt_len, src_len) over all keys, and the bool mask of keys they exclude (or None).

        ``covering``: every span reaches every distance (z >= src_len - 1), so the span mask is 1 wherever a key may
        be seen and is skipped (future keys are still masked for a causal span)."""
        scores = self._scores(q, k)  # (bsz, num_heads, tgt_len, src_len)
        tgt_len, src_len = scores.shape[-2:]
        if self.key_positions is not None:  # queries are the last tgt_len keys
            dist = span_distances(tgt_len, src_len, True, query_offset=src_len - tgt_len, device=scores.device)
            scores = scores + self.key_positions(q, dist, src_len)
        scores, mask = self._mask(scores, key_padding_mask, attn_mask, k.size(0))
        if spans is None:
            return self.normalizer(scores, mask), mask
        if covering:
            mask = self._future_mask(mask, tgt_len, src_len, scores.device) if self.causal else mask
            return keep_spans_in_graph(self.normalizer(scores, mask), spans), mask
        # queries are the last tgt_len keys (self-attention; incremental: the cache ends at the current step)
        dist = span_distances(tgt_len, src_len, self.causal, query_offset=src_len - tgt_len, device=scores.device)
        soft = self.span.mask_at(dist, self.causal, spans)  # (H, T, S) or (bsz, H, T, S)
        weights = self.span.normalize(self.normalizer, fill_masked(scores, mask), soft, self.renormalize_span)
        return weights, self._stats_mask(mask, soft)

    @staticmethod
    def _future_mask(mask: Optional[Tensor], tgt_len: int, src_len: int, device) -> Optional[Tensor]:
        """``mask`` or-ed with the keys after each query (queries are the last tgt_len keys); None if there are none."""
        if tgt_len == 1:
            return mask
        future = span_distances(tgt_len, src_len, True, query_offset=src_len - tgt_len, device=device) < 0
        return future if mask is None else mask | future  # (tgt_len, src_len)

    def _band_weights(self, q: Tensor, k: Tensor, key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor],
                      spans: Tensor, band: Band) -> Tuple[Tensor, Optional[Tensor]]:
        """Weights (bsz, H, num_blocks, block, width) on the band; :meth:`_full_weights` restricted to it.

        Masks of keys (outside the sequence, padding, attn_mask) become one additive bias of at most
        (bsz, 1, num_blocks, block, width); a static span's soft mask is (H, 1, block, width), the same in every block.
        """
        scores = band_scores(q, k, band)  # (bsz, num_heads, num_blocks, block, width)
        if self.key_positions is not None:  # distances are the same in every block
            scores = scores + self.key_positions(band_queries(q, band), band.distances(True, scores.device),
                                                 band.left + band.block)
        masked, bias = self._band_key_bias(band, key_padding_mask, attn_mask, scores.dtype, scores.device)
        scores = scores.add_(bias)  # the matmul's output is not needed by its backward: add in place
        if spans.ndim == 3:  # dynamic (bsz, H, tgt_len) -> (bsz, H, num_blocks, block), zero for padded rows
            spans = nn.functional.pad(spans, (0, band.padded_len - band.length)).unflatten(-1, scores.shape[2:4])
        # the distances repeat in every block: a static mask is (H, block, width), broadcast over the blocks
        soft = self.span.mask_at(band.distances(self.causal, scores.device), self.causal, spans)
        soft = soft.unsqueeze(-3) if spans.ndim == 1 else soft  # (H, 1, block, W) or (bsz, H, nb, block, W)
        weights = self.span.normalize(self.normalizer, scores, soft, self.renormalize_span)
        return weights, self._stats_mask(masked, soft)

    @staticmethod
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

    @staticmethod
    def _real_rows(weights: Tensor, mask: Optional[Tensor], band: Optional[Band]) -> Tuple[Tensor, Optional[Tensor]]:
        """Banded weights and mask (.., num_blocks, block, width) without the padded query rows: (.., length, width)."""
        if band is None:
            return weights, mask
        weights = weights.flatten(-3, -2)[..., : band.length, :]
        if mask is not None:
            mask = mask.expand(weights.shape[:-2] + mask.shape[-3:]).flatten(-3, -2)[..., : band.length, :]
        return weights, mask

    def _stats_mask(self, masked: Optional[Tensor], soft: Tensor) -> Optional[Tensor]:
        """Keys the weights exclude (masked, or span mask 0), for the zero-fraction statistic; None if not logged."""
        if self.stats_key is None:
            return None
        return soft == 0 if masked is None else masked | (soft == 0)

    def _log_stats(self, weights: Tensor, mask: Optional[Tensor], spans: Optional[Tensor]) -> None:
        log_attention_stats(self.stats_key, weights, mask, self.normalizer)
        if spans is not None:
            log_span_stats(self.stats_key, self.layer_index, spans)

    def _project(
        self, query: Tensor, key: Optional[Tensor], value: Optional[Tensor], key_padding_mask: Optional[Tensor]
    ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """Project and split heads: q (bsz, H, tgt_len, head_dim); k, v (kv_bsz, H, src_len, head_dim) or None."""
        tgt_len, bsz, _ = query.shape
        q = self._split_heads(self.q_proj(query) * self.scaling)  # (bsz, H, tgt_len, head_dim)
        if self.self_attention:
            key = value = query
        elif self.encoder_decoder_attention and key is not None:
            value = key
            if self.beam_size > 1 and key.size(1) == bsz:
                # one copy of the encoder output per sentence: (src_len, bsz, C) -> (src_len, bsz / beam, C)
                key = value = key.unflatten(1, (-1, self.beam_size))[:, :, 0]
                if key_padding_mask is not None:
                    key_padding_mask = key_padding_mask.unflatten(0, (-1, self.beam_size))[:, 0]
        if key is None:
            return q, None, None, key_padding_mask
        if value is None:
            raise ValueError("key is given but value is None")
        k = self._split_heads(self.k_proj(key))  # (kv_bsz, H, src_len, head_dim)
        v = self._split_heads(self.v_proj(value))  # (kv_bsz, H, src_len, head_dim)
        return q, k, v, key_padding_mask

    def _split_heads(self, x: Tensor) -> Tensor:
        """(len, bsz, embed_dim) -> (bsz, num_heads, len, head_dim)."""
        length, bsz, _ = x.shape
        return x.view(length, bsz, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

    def _update_cache(
        self,
        incremental_state: IncrementalState,
        saved_state: Dict[str, Optional[Tensor]],
        k: Optional[Tensor],
        v: Optional[Tensor],
        key_padding_mask: Optional[Tensor],
        static_kv: bool,
    ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Prepend cached keys/values (or reuse them if static) and store the result; shapes as in :meth:`_project`.

        With an adaptive span only the keys the next queries can reach are stored (``AdaptiveSpan.cache_keys``)."""
        prev_key, prev_value = saved_state.get("prev_key"), saved_state.get("prev_value")
        if prev_key is not None and prev_value is not None:
            if static_kv:
                k, v = prev_key, prev_value  # (kv_bsz, H, src_len, head_dim)
            else:
                k = torch.cat([prev_key, k], dim=2)  # (kv_bsz, H, prev_len + tgt_len, head_dim)
                v = torch.cat([prev_value, v], dim=2)
        if k is None or v is None:
            raise ValueError("no keys: neither key/value nor a cached prev_key/prev_value was given")
        key_padding_mask = MultiheadAttention._append_prev_key_padding_mask(
            key_padding_mask=key_padding_mask,
            prev_key_padding_mask=saved_state.get("prev_key_padding_mask"),
            batch_size=k.size(0),
            src_len=k.size(2),
            static_kv=static_kv,
        )  # (kv_bsz, src_len) or None
        keep = k.size(2) if self.span is None or static_kv else self.span.cache_keys(k.size(2))
        # only the last ``keep`` keys can have a nonzero span mask for the coming queries: the cache stays bounded
        saved_state["prev_key"], saved_state["prev_value"] = k[:, :, -keep:], v[:, :, -keep:]
        saved_state["prev_key_padding_mask"] = None if key_padding_mask is None else key_padding_mask[:, -keep:]
        self._set_input_buffer(incremental_state, saved_state)
        return k, v, key_padding_mask

    def _memory_keys(self, available: int) -> int:
        """Keys the next block can reach: the largest span plus the ramp, rounded up to a multiple of
        _MEMORY_GRAIN (the whole S plus the ramp with memory_mode "full")."""
        if self.memory_mode == "full":
            return min(available, keys_needed(self.span.max_span, self.span.ramp, available))
        return min(available, -(-self.span.cache_keys(available) // _MEMORY_GRAIN) * _MEMORY_GRAIN)

    def _scores(self, q: Tensor, k: Tensor) -> Tensor:
        """q.k / sqrt(head_dim) (q is pre-scaled); keys shared by a sentence's beams broadcast over them.

        q (bsz, H, tgt_len, head_dim), k (kv_bsz, H, src_len, head_dim) -> (bsz, H, tgt_len, src_len).
        """
        bsz, kv_bsz = q.size(0), k.size(0)
        if bsz == kv_bsz:
            return torch.matmul(q, k.transpose(-1, -2))  # (bsz, H, tgt_len, src_len)
        # Fold the beams into the query rows (as fairseq's einsum does): one matmul per sentence and head, and the
        # keys are never expanded to bsz copies (a broadcast matmul would copy them at every decoding step).
        q_beams = q.unflatten(0, (kv_bsz, -1))  # (kv_bsz, beam, H, tgt_len, head_dim)
        beam, tgt_len = q_beams.size(1), q_beams.size(3)
        q_rows = q_beams.transpose(1, 2).flatten(2, 3)  # (kv_bsz, H, beam * tgt_len, head_dim)
        scores = torch.matmul(q_rows, k.transpose(-1, -2))  # (kv_bsz, H, beam * tgt_len, src_len)
        scores = scores.unflatten(2, (beam, tgt_len)).transpose(1, 2)  # (kv_bsz, beam, H, tgt_len, src_len)
        return scores.flatten(0, 1)  # (bsz, H, tgt_len, src_len)

    def _mask(
        self, scores: Tensor, key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], kv_bsz: int
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Bool mask (True = masked) broadcastable to scores (bsz, H, tgt_len, src_len), and scores plus any additive
        (finite, non-masking) part of a float ``attn_mask``."""
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

    def _before_softmax_output(self, scores: Tensor, mask: Optional[Tensor], v: Tensor) -> Tuple[Tensor, Tensor]:
        """fairseq's ``before_softmax`` return: masked scores (bsz * H, tgt_len, src_len), v (kv_bsz * H, src_len, d)."""
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        return scores.flatten(0, 1), v.flatten(0, 1)

    def _mix_values(self, probs: Tensor, v: Tensor) -> Tensor:
        """probs (bsz, H, tgt_len, src_len) x v (kv_bsz, H, src_len, head_dim) -> (tgt_len, bsz, embed_dim)."""
        bsz, kv_bsz = probs.size(0), v.size(0)
        if bsz == kv_bsz:
            attn = torch.matmul(probs, v)  # (bsz, H, tgt_len, head_dim)
        else:  # beams folded into the query rows, as in _scores
            beams = probs.unflatten(0, (kv_bsz, -1))  # (kv_bsz, beam, H, tgt_len, src_len)
            beam, tgt_len = beams.size(1), beams.size(3)
            attn = torch.matmul(beams.transpose(1, 2).flatten(2, 3), v)  # (kv_bsz, H, beam * tgt_len, head_dim)
            attn = attn.unflatten(2, (beam, tgt_len)).transpose(1, 2).flatten(0, 1)  # (bsz, H, tgt_len, head_dim)
        return attn.permute(2, 0, 1, 3).flatten(2)  # (tgt_len, bsz, embed_dim)

    @staticmethod
    def _returned_weights(weights: Tensor, need_weights: bool, need_head_weights: bool) -> Optional[Tensor]:
        """None, (num_heads, bsz, tgt_len, src_len) per head, or (bsz, tgt_len, src_len) averaged over heads."""
        if not need_weights:
            return None
        per_head = weights.transpose(0, 1)  # (num_heads, bsz, tgt_len, src_len)
        return per_head if need_head_weights else per_head.mean(dim=0)

    # ----- incremental decoding: fairseq's buffer names, layout and reorder rules -----

    @torch.jit.export
    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> IncrementalState:
        """Reorder cached keys/values along their batch dim to follow ``new_order`` (the beam search's choice)."""
        buffer = self._get_input_buffer(incremental_state)
        if not buffer:
            return incremental_state
        for name, cached in buffer.items():
            if cached is not None:
                buffer[name] = self._reorder_cached(cached, new_order)
        return self._set_input_buffer(incremental_state, buffer)

    def _reorder_cached(self, cached: Tensor, new_order: Tensor) -> Tensor:
        if self.encoder_decoder_attention:
            if cached.size(0) * self.beam_size == new_order.size(0):
                # Static keys of a sentence are the same for all its beams, and beams are only reordered within
                # their sentence (fairseq's rule): nothing to do until finished sentences are dropped.
                return cached
            if self.beam_size > 1:
                return cached.index_select(0, new_order.reshape(-1, self.beam_size)[:, 0] // self.beam_size)
        return cached.index_select(0, new_order)

    def set_beam_size(self, beam_size: int) -> None:
        """Share cross-attention keys among a sentence's ``beam_size`` beams (fairseq's sequence generator calls it)."""
        self.beam_size = beam_size

    def _get_input_buffer(self, incremental_state: Optional[IncrementalState]) -> Dict[str, Optional[Tensor]]:
        result = self.get_incremental_state(incremental_state, "attn_state")
        return result if result is not None else {}

    def _set_input_buffer(self, incremental_state: IncrementalState, buffer: Dict[str, Optional[Tensor]]):
        return self.set_incremental_state(incremental_state, "attn_state", buffer)

    def upgrade_state_dict_named(self, state_dict, name):
        """Old fused in_proj checkpoints -> q_proj/k_proj/v_proj, exactly as fairseq's MultiheadAttention does."""
        MultiheadAttention.upgrade_state_dict_named(self, state_dict, name)

    def extra_repr(self) -> str:
        mode = "self" if self.self_attention else "encoder_decoder" if self.encoder_decoder_attention else "general"
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, mode={mode}, causal={self.causal}, "
            f"dropout={self.dropout_module.p}"
        )
