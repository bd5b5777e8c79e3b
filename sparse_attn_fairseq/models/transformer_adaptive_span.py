"""Registrations of ``transformer_adaptive_span`` (translation) and ``transformer_lm_adaptive_span`` (language model).

Adaptive attention span (Sukhbaatar, Grave, Bojanowski, Joulin, ACL 2019): every head of the encoder and decoder
self-attention learns how far back (decoder) or around (encoder) it looks; cross-attention stays full. Softmax by
default, any registered normalizer on request (see options.py for the flags). Training hooks (penalty, clamps):
modules/span_training.py. Presets mirror fairseq's, plus the paper's small and large character-level LMs.

In the streaming task (``--task truncated_bptt_lm``) the language model keeps a memory of earlier tokens per data
split (modules/stream_memory.py) and, by default, uses relative key positions instead of absolute ones.
"""

import logging
from dataclasses import dataclass

from fairseq.models import register_model, register_model_architecture
from fairseq.models import transformer_lm as lm_presets
from fairseq.models.transformer import transformer_legacy as mt_presets
from fairseq.models.transformer_lm import TransformerLanguageModelConfig
from fairseq.utils import safe_getattr

from sparse_attn_fairseq.functional.span import keys_needed
from sparse_attn_fairseq.layers.key_positions import KeyPositions
from sparse_attn_fairseq.models.sparse_transformer import SparseTransformerLanguageModel, SparseTransformerModel
from sparse_attn_fairseq.modules.span_training import AdaptiveSpanTraining
from sparse_attn_fairseq.modules.sparse_multihead_attention import SparseMultiheadAttention
from sparse_attn_fairseq.modules.stream_memory import StreamMemory, StreamPosition
from sparse_attn_fairseq.options import SPAN, SpanAttentionConfig, SpanLMAttentionConfig
from sparse_attn_fairseq.tasks.truncated_bptt_lm import TruncatedBPTTLMTask

logger = logging.getLogger(__name__)
RELATIVE_MAX_POSITIONS = 1 << 20  # what max_positions() reports with relative positions: only memory bounds a prompt


@register_model("transformer_adaptive_span")
class TransformerAdaptiveSpanModel(AdaptiveSpanTraining, SparseTransformerModel):
    """fairseq's TransformerModel with adaptive spans in encoder and decoder self-attention."""

    attention_config = SpanAttentionConfig
    attention_method = SPAN
    attention_span = True

    def forward(self, src_tokens, src_lengths, prev_output_tokens, return_all_hiddens: bool = True,
                features_only: bool = False, alignment_layer=None, alignment_heads=None):
        self.set_span_sample_size(prev_output_tokens, self.decoder.padding_idx)
        return super().forward(src_tokens, src_lengths, prev_output_tokens, return_all_hiddens, features_only,
                               alignment_layer, alignment_heads)


@dataclass
class TransformerAdaptiveSpanLMConfig(TransformerLanguageModelConfig, SpanLMAttentionConfig):
    """fairseq's transformer_lm flags plus the adaptive span and decoder normalizer flags."""


@register_model("transformer_lm_adaptive_span", dataclass=TransformerAdaptiveSpanLMConfig)
class TransformerAdaptiveSpanLanguageModel(AdaptiveSpanTraining, SparseTransformerLanguageModel):
    """fairseq's transformer_lm with adaptive spans in its (causal) self-attention."""

    attention_method = SPAN
    attention_span = True
    takes_stream_position = True  # truncated_bptt_lm passes ``stream`` to forward

    def __init__(self, decoder):
        super().__init__(decoder)
        self.stream_memory = StreamMemory()  # not module state: never in a checkpoint

    @classmethod
    def build_model(cls, args, task):
        streaming = isinstance(task, TruncatedBPTTLMTask)
        positions = str(safe_getattr(args, "adaptive_span_positions", "absolute"))
        if positions == "auto":  # resolved once and saved, so a reloaded model keeps its positions in any task
            positions = args.adaptive_span_positions = "relative" if streaming else "absolute"
        if positions == "relative":
            args.no_token_positional_embeddings = True
        elif streaming:
            logger.warning("--adaptive-span-positions absolute in a streaming task: positions restart at every block")
        if streaming and safe_getattr(args, "checkpoint_activations", False):
            raise ValueError("--checkpoint-activations cannot be used with truncated_bptt_lm: recomputing a layer "
                             "in backward would advance its memory twice")
        model = super().build_model(args, task)
        if positions == "relative":
            model.decoder.key_positions = KeyPositions(keys_needed(args.adaptive_span_max, args.adaptive_span_ramp,
                                                                   10**9), args.decoder_embed_dim //
                                                       args.decoder_attention_heads)
            model.decoder.max_target_positions = RELATIVE_MAX_POSITIONS  # no position table limits the length
        for attention in model.span_attentions():
            attention.use_key_positions(getattr(model.decoder, "key_positions", None))
            attention.memory_mode = str(safe_getattr(args, "adaptive_span_memory", "span"))
        return model

    def span_attentions(self):
        """The decoder's span self-attentions, in layer order."""
        return [m for m in self.decoder.modules() if isinstance(m, SparseMultiheadAttention) and m.span is not None]

    def forward(self, src_tokens, stream: StreamPosition = None, **kwargs):
        """fairseq's LM forward; ``stream`` (set by truncated_bptt_lm) continues that split's streams from memory."""
        self.set_span_sample_size(src_tokens, self.decoder.padding_idx)
        if stream is None:
            return super().forward(src_tokens, **kwargs)
        with self.stream_memory.attached(self.span_attentions(), stream, src_tokens.size(0)):
            return super().forward(src_tokens, **kwargs)


def transformer_lm_adaptive_span_small(args):
    """The paper's small character-level model: 12 layers, d 512, 8 heads, FFN 2048, S = 8192, dropout 0.3, penalty
    5e-7 (facebookresearch/adaptive-span experiments/enwik8_small.sh)."""
    args.decoder_layers = safe_getattr(args, "decoder_layers", 12)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 512)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 2048)
    args.decoder_attention_heads = safe_getattr(args, "decoder_attention_heads", 8)
    args.dropout = safe_getattr(args, "dropout", 0.3)
    args.adaptive_span_max = safe_getattr(args, "adaptive_span_max", 8192)
    args.adaptive_span_loss = safe_getattr(args, "adaptive_span_loss", 5e-7)
    args.max_target_positions = safe_getattr(args, "max_target_positions", 8192)
    args.decoder_normalize_before = safe_getattr(args, "decoder_normalize_before", True)
    lm_presets.base_lm_architecture(args)


def transformer_lm_adaptive_span_large(args):
    """The paper's large character-level model: 24 layers, d 768, 8 heads, FFN 4096, S = 8192, dropout 0.4."""
    args.decoder_layers = safe_getattr(args, "decoder_layers", 24)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 768)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 4096)
    args.dropout = safe_getattr(args, "dropout", 0.4)
    transformer_lm_adaptive_span_small(args)


MT_PRESETS = {
    "transformer_adaptive_span": mt_presets.base_architecture,
    "transformer_adaptive_span_iwslt_de_en": mt_presets.transformer_iwslt_de_en,
    "transformer_adaptive_span_wmt_en_de": mt_presets.transformer_wmt_en_de,
}
# "transformer_lm_adaptive_span" itself is registered by register_model (a dataclass model).
LM_PRESETS = {"transformer_lm_adaptive_span_small": transformer_lm_adaptive_span_small,
              "transformer_lm_adaptive_span_large": transformer_lm_adaptive_span_large}
for _arch, _preset in MT_PRESETS.items():
    register_model_architecture("transformer_adaptive_span", _arch)(_preset)
for _arch, _preset in LM_PRESETS.items():
    register_model_architecture("transformer_lm_adaptive_span", _arch)(_preset)
ARCHITECTURES = (*MT_PRESETS, "transformer_lm_adaptive_span", *LM_PRESETS)
