"""One fairseq attention module for every normalizer: softmax, sparsemax, entmax (fixed or learned alpha), ReLA.

It honours fairseq 0.12.2's ``MultiheadAttention`` contract (forward signature and return, key padding and attention
masks, incremental state, ``reorder_incremental_state``, cross-attention keys shared across a sentence's beams via
``set_beam_size``, q_proj/k_proj/v_proj/out_proj names) so fairseq's layers, generator and checkpoints work unchanged.
That contract is all it keeps:

    project -> cache or memory -> [attention core: weights and values] -> observers -> output norm -> out_proj

"Compute the weights and mix the values" is delegated to an attention core (modules/attention_cores.py), the first
in registry order that accepts the call: torch's fused scaled_dot_product_attention when the normalizer is softmax,
there is no span and nobody needs the weights; on CUDA, flex_attention for ReLA and for softmax with a span
(modules/flex_cores.py); a banded or a dense adaptive-span core; or the dense core with the registered normalizer,
whose kernel the kernel registry chooses (kernels/).

With an adaptive span (Sukhbaatar et al., ACL 2019) the incremental cache keeps only the keys the span reaches, so
generation memory grows with the span, not the length. Streaming language models add a memory
(modules/stream_memory.py) of the keys and values of the tokens before the current block, prepended to the block's
own and trimmed to what the spans reach, and relative key positions (layers/key_positions.py), q . e_d per distance.
Statistics (sparsity, alpha, spans) are observers (modules/attention_stats.py), attached only when wanted.

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

from sparse_attn_fairseq.functional.span import keys_needed
from sparse_attn_fairseq.modules import flex_cores  # noqa: F401  (registers the flex core, CUDA)
from sparse_attn_fairseq.modules.attention_cores import AttentionCall, attention_scores, choose_core, mask_scores
from sparse_attn_fairseq.modules.attention_stats import AttentionStatsObserver
from sparse_attn_fairseq.modules.stream_memory import prepend_memory

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]
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
        stats_key: when set, an :class:`AttentionStatsObserver` logs sparsity, alpha and spans under this name.

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
        self.observers = [AttentionStatsObserver(stats_key)] if stats_key is not None else []
        self.span_banding = True  # False forces the full computation (tests and benchmarks compare the two)
        self.force_core: Optional[str] = None  # the name of an attention core to use instead of the first that fits
        self.memory = None  # a modules.stream_memory.MemorySlot, lent for one streaming forward
        self.memory_mode = "span"  # see MEMORY_MODES; "full" also computes every memory key (Transformer-XL's cost)
        self.reset_parameters()

    @property
    def layer_index(self) -> Optional[int]:
        """The layer's index in its encoder or decoder (set by them): per-layer log keys."""
        return self.__dict__.get("_layer_index")

    @layer_index.setter
    def layer_index(self, index: Optional[int]) -> None:
        self.__dict__["_layer_index"] = index
        for observer in self.observers:
            observer.layer_index = index

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
            return self._before_softmax_output(*mask_scores(attention_scores(q, k), key_padding_mask, attn_mask,
                                                            k.size(0)), v)
        observing = bool(self.observers) and incremental_state is None
        call = AttentionCall(q, k, v, key_padding_mask, attn_mask, spans, need_weights or need_head_weights,
                             incremental_state is not None,
                             observing and any(o.wants_weights(self.normalizer) for o in self.observers))
        result = choose_core(self, call).run(self, call)
        if observing:
            for observer in self.observers:
                observer(self.normalizer, result.observed, spans)
        attn = result.attn  # (tgt_len, bsz, embed_dim)
        if self.output_norm is not None:
            attn = self.output_norm(attn)
        return self.out_proj(attn), self._returned_weights(result.weights, need_weights or need_head_weights,
                                                           need_head_weights)

    # ----- adaptive span -----

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

    def _project(
        self, query: Tensor, key: Optional[Tensor], value: Optional[Tensor], key_padding_mask: Optional[Tensor]
    ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """Project and split heads: q (bsz, H, tgt_len, head_dim); k, v (kv_bsz, H, src_len, head_dim) or None."""
        tgt_len, bsz, _ = query.shape
        q = self._split_heads(self.q_proj(query).mul_(self.scaling))  # (bsz, H, tgt_len, head_dim); a fresh tensor
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
        if keep < k.size(2):
            k_kept, v_kept = k[:, :, -keep:], v[:, :, -keep:]
            mask_kept = None if key_padding_mask is None else key_padding_mask[:, -keep:]
        else:
            k_kept, v_kept, mask_kept = k, v, key_padding_mask
        saved_state["prev_key"], saved_state["prev_value"], saved_state["prev_key_padding_mask"] = \
            k_kept, v_kept, mask_kept
        self._set_input_buffer(incremental_state, saved_state)
        return k, v, key_padding_mask

    def _memory_keys(self, available: int) -> int:
        """Keys the next block can reach: the largest span plus the ramp, rounded up to a multiple of
        _MEMORY_GRAIN (the whole S plus the ramp with memory_mode "full")."""
        if self.memory_mode == "full":
            return min(available, keys_needed(self.span.max_span, self.span.ramp, available))
        return min(available, -(-self.span.cache_keys(available) // _MEMORY_GRAIN) * _MEMORY_GRAIN)

    def _before_softmax_output(self, scores: Tensor, mask: Optional[Tensor], v: Tensor) -> Tuple[Tensor, Tensor]:
        """fairseq's ``before_softmax`` return: masked scores (bsz * H, tgt_len, src_len), v (kv_bsz * H, src_len, d)."""
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        return scores.flatten(0, 1), v.flatten(0, 1)

    @staticmethod
    def _returned_weights(weights: Optional[Tensor], need_weights: bool, need_head_weights: bool
                          ) -> Optional[Tensor]:
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
