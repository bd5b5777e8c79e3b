"""fairseq Transformer layers, encoder and decoder whose attention is :class:`SparseMultiheadAttention`.

Only fairseq's ``build_*`` seams are overridden (SPEC section 5): layers override ``build_self_attention`` /
``build_encoder_attention``; encoder and decoder override ``build_encoder_layer`` / ``build_decoder_layer`` and re-add
fairseq's activation checkpointing and FSDP wrapping, which a layer-builder override would otherwise skip. The
:class:`~sparse_attn_fairseq.options.AttentionOptions` are set before fairseq's ``__init__`` runs the builders.
"""

from __future__ import annotations

from typing import Optional

from fairseq.distributed import fsdp_wrap
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase
from torch import nn

from sparse_attn_fairseq.layers.adaptive_span import AdaptiveSpan
from sparse_attn_fairseq.layers.normalizers import build_normalizer
from sparse_attn_fairseq.layers.rela_norm import RelaOutputNorm
from sparse_attn_fairseq.modules.sparse_multihead_attention import SparseMultiheadAttention
from sparse_attn_fairseq.options import AttentionOptions, NormalizerSpec, SpanOptions

# Log keys of the three attention types (see modules/attention_stats.py).
STATS_KEYS = {"encoder": "enc", "decoder": "dec", "encoder_decoder": "encdec"}


def stats_key(options: AttentionOptions, attention_type: str) -> Optional[str]:
    """The log key of an attention type's statistics observer, or None without statistics."""
    return STATS_KEYS[attention_type] if options.stats else None


def build_sparse_attention(embed_dim: int, num_heads: int, spec: NormalizerSpec, span: Optional[SpanOptions] = None,
                           **kwargs) -> SparseMultiheadAttention:
    """The attention module for one attention type; ``kwargs`` are SparseMultiheadAttention's own arguments.

    The spec's output norm (ReLA) goes before out_proj. With ``span`` (self-attention only) it gets an AdaptiveSpan;
    rows are renormalised after the span mask unless the normalizer's rows do not sum to one (ReLA).
    """
    normalizer = build_normalizer(spec.name, num_heads, kernel=spec.kernel, **spec.kwargs())
    norm_kwargs = spec.output_norm_kwargs()
    if norm_kwargs is not None:
        kwargs.update(output_norm=RelaOutputNorm(embed_dim, num_heads, **norm_kwargs))
    if span is not None:
        kwargs.update(span=AdaptiveSpan(num_heads, span.max_span, span.ramp, span.init_span, span.dynamic,
                                        embed_dim if span.dynamic else None, span.loss_coefficient),
                      renormalize_span=normalizer.sums_to_one)
    return SparseMultiheadAttention(embed_dim, num_heads, normalizer, **kwargs)


def number_span_layers(module: nn.Module) -> None:
    """Give each span self-attention of an encoder or decoder its layer index (per-layer span log keys)."""
    attentions = [m for m in module.modules() if isinstance(m, SparseMultiheadAttention) and m.span is not None]
    for index, attention in enumerate(attentions):
        attention.layer_index = index


def _refuse_unsupported(xformers_att_config, add_bias_kv: bool = False, add_zero_attn: bool = False) -> None:
    unsupported = [name for name, value in (("xformers_att_config", xformers_att_config),
                                            ("add_bias_kv", add_bias_kv), ("add_zero_attn", add_zero_attn)) if value]
    if unsupported:
        raise NotImplementedError(f"sparse attention does not support {', '.join(unsupported)}")


class SparseTransformerEncoderLayer(TransformerEncoderLayerBase):
    """fairseq's encoder layer with sparse self-attention; torch's fused encoder fast path is always off."""

    def __init__(self, cfg, attention_options: AttentionOptions, return_fc: bool = False):
        self.attention_options = attention_options  # read by build_self_attention inside super().__init__
        super().__init__(cfg, return_fc=return_fc)
        # The "BetterTransformer" path would run torch's fused softmax layer and bypass self_attn (SPEC section 4).
        self.can_use_fastpath = False

    def build_self_attention(self, embed_dim, cfg):
        _refuse_unsupported(cfg.encoder.xformers_att_config)
        return build_sparse_attention(
            embed_dim, cfg.encoder.attention_heads, self.attention_options.spec("encoder"),
            span=self.attention_options.span, dropout=cfg.attention_dropout, self_attention=True,
            q_noise=self.quant_noise, qn_block_size=self.quant_noise_block_size,
            stats_key=stats_key(self.attention_options, "encoder"),
        )


class SparseTransformerDecoderLayer(TransformerDecoderLayerBase):
    """fairseq's decoder layer with sparse self- and encoder-decoder attention."""

    def __init__(self, cfg, attention_options: AttentionOptions, no_encoder_attn: bool = False):
        self.attention_options = attention_options  # read by the attention builders inside super().__init__
        super().__init__(cfg, no_encoder_attn=no_encoder_attn)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        _refuse_unsupported(cfg.decoder.xformers_att_config, add_bias_kv, add_zero_attn)
        return build_sparse_attention(
            embed_dim, cfg.decoder.attention_heads, self.attention_options.spec("decoder"),
            span=self.attention_options.span, dropout=cfg.attention_dropout,
            self_attention=not cfg.cross_self_attention, causal=True,
            q_noise=self.quant_noise, qn_block_size=self.quant_noise_block_size,
            stats_key=stats_key(self.attention_options, "decoder"),
        )

    def build_encoder_attention(self, embed_dim, cfg):
        _refuse_unsupported(cfg.encoder.xformers_att_config)
        return build_sparse_attention(
            embed_dim, cfg.decoder.attention_heads, self.attention_options.spec("encoder_decoder"),
            kdim=cfg.encoder.embed_dim, vdim=cfg.encoder.embed_dim, dropout=cfg.attention_dropout,
            encoder_decoder_attention=True, q_noise=self.quant_noise, qn_block_size=self.quant_noise_block_size,
            stats_key=stats_key(self.attention_options, "encoder_decoder"),
        )


def wrap_layer(layer: nn.Module, cfg) -> nn.Module:
    """fairseq's wrapping of a freshly built layer: activation checkpointing, then FSDP (always, if checkpointed)."""
    if cfg.checkpoint_activations:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    min_params_to_wrap = cfg.min_params_to_wrap if not cfg.checkpoint_activations else 0
    return fsdp_wrap(layer, min_num_params=min_params_to_wrap)


class SparseTransformerEncoder(TransformerEncoderBase):
    """fairseq's Transformer encoder built from :class:`SparseTransformerEncoderLayer`."""

    def __init__(self, cfg, dictionary, embed_tokens, attention_options: AttentionOptions, return_fc: bool = False):
        self.attention_options = attention_options  # read by build_encoder_layer inside super().__init__
        super().__init__(cfg, dictionary, embed_tokens, return_fc=return_fc)
        number_span_layers(self)

    def build_encoder_layer(self, cfg):
        return wrap_layer(SparseTransformerEncoderLayer(cfg, self.attention_options, return_fc=self.return_fc), cfg)


class SparseTransformerDecoder(TransformerDecoderBase):
    """fairseq's Transformer decoder built from :class:`SparseTransformerDecoderLayer`."""

    def __init__(self, cfg, dictionary, embed_tokens, attention_options: AttentionOptions,
                 no_encoder_attn: bool = False, output_projection=None):
        self.attention_options = attention_options  # read by build_decoder_layer inside super().__init__
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn,
                         output_projection=output_projection)
        number_span_layers(self)

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return wrap_layer(SparseTransformerDecoderLayer(cfg, self.attention_options, no_encoder_attn), cfg)

    def buffered_future_mask(self, tensor):
        """fairseq's (T, T) mask of future keys, or None when every self-attention has a causal span: a span mask
        already gives those keys zero weight, and gathering the mask onto a band would cost time and memory."""
        spans = [m.span is not None and m.causal for m in self.modules() if isinstance(m, SparseMultiheadAttention)
                 and m.self_attention]
        if spans and all(spans):
            return None
        return super().buffered_future_mask(tensor)
