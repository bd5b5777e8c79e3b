"""Registrations of ``transformer_adaptive_span`` (translation) and ``transformer_lm_adaptive_span`` (language model).

Adaptive attention span (Sukhbaatar, Grave, Bojanowski, Joulin, ACL 2019): every head of the encoder and decoder
self-attention learns how far back (decoder) or around (encoder) it looks; cross-attention stays full. Softmax by
default, any registered normalizer on request (see options.py for the flags). Training hooks (penalty, clamps):
modules/span_training.py. Presets mirror fairseq's, plus the paper's small character-level LM.
"""

from dataclasses import dataclass

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models import transformer_lm as lm_presets
from fairseq.models.transformer import TransformerConfig, TransformerModel
from fairseq.models.transformer import transformer_legacy as mt_presets
from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig
from fairseq.utils import safe_getattr

from sparse_attn_fairseq.modules.span_training import AdaptiveSpanTraining
from sparse_attn_fairseq.modules.transformer_layers import SparseTransformerDecoder, SparseTransformerEncoder
from sparse_attn_fairseq.options import SPAN, SpanAttentionConfig, SpanLMAttentionConfig, read_attention_options


def _options(args, attention_types=("encoder", "decoder", "encoder_decoder")):
    return read_attention_options(args, attention_types, SPAN, span=True)


@register_model("transformer_adaptive_span")
class TransformerAdaptiveSpanModel(AdaptiveSpanTraining, TransformerModel):
    """fairseq's TransformerModel with adaptive spans in encoder and decoder self-attention."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        gen_parser_from_dataclass(parser, SpanAttentionConfig())

    @classmethod
    def build_model(cls, args, task):
        _options(args)  # fail on bad flags before any parameter is built
        model = super().build_model(args, task)
        model.span_sentence_avg = bool(safe_getattr(args, "sentence_avg", False))
        return model

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return SparseTransformerEncoder(TransformerConfig.from_namespace(args), src_dict, embed_tokens, _options(args))

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        return SparseTransformerDecoder(TransformerConfig.from_namespace(args), tgt_dict, embed_tokens, _options(args),
                                        no_encoder_attn=safe_getattr(args, "no_cross_attention", False))

    def forward(self, src_tokens, src_lengths, prev_output_tokens, return_all_hiddens: bool = True,
                features_only: bool = False, alignment_layer=None, alignment_heads=None):
        self.set_span_sample_size(prev_output_tokens, self.decoder.padding_idx)
        return super().forward(src_tokens, src_lengths, prev_output_tokens, return_all_hiddens, features_only,
                               alignment_layer, alignment_heads)


@dataclass
class TransformerAdaptiveSpanLMConfig(TransformerLanguageModelConfig, SpanLMAttentionConfig):
    """fairseq's transformer_lm flags plus the adaptive span and decoder normalizer flags."""


@register_model("transformer_lm_adaptive_span", dataclass=TransformerAdaptiveSpanLMConfig)
class TransformerAdaptiveSpanLanguageModel(AdaptiveSpanTraining, TransformerLanguageModel):
    """fairseq's transformer_lm with adaptive spans in its (causal) self-attention."""

    @classmethod
    def build_model(cls, args, task):
        options = _options(args, ("decoder",))  # fail on bad flags first
        # fairseq builds the LM's embeddings inline in build_model: reuse them from a stock model (built, dropped).
        stock = super().build_model(args, task)
        decoder = SparseTransformerDecoder(TransformerConfig.from_namespace(args), task.target_dictionary,
                                           stock.decoder.embed_tokens, options, no_encoder_attn=True)
        model = cls(decoder)
        model.span_sentence_avg = bool(safe_getattr(args, "sentence_avg", False))
        return model

    def forward(self, src_tokens, **kwargs):
        self.set_span_sample_size(src_tokens, self.decoder.padding_idx)
        return super().forward(src_tokens, **kwargs)


def transformer_lm_adaptive_span_small(args):
    """The paper's small character-level model: 12 layers, d 512, 8 heads, FFN 2048, S = 8192, penalty 5e-7."""
    args.decoder_layers = safe_getattr(args, "decoder_layers", 12)
    args.decoder_embed_dim = safe_getattr(args, "decoder_embed_dim", 512)
    args.decoder_ffn_embed_dim = safe_getattr(args, "decoder_ffn_embed_dim", 2048)
    args.decoder_attention_heads = safe_getattr(args, "decoder_attention_heads", 8)
    args.adaptive_span_max = safe_getattr(args, "adaptive_span_max", 8192)
    args.adaptive_span_loss = safe_getattr(args, "adaptive_span_loss", 5e-7)
    args.max_target_positions = safe_getattr(args, "max_target_positions", 8192)
    args.decoder_normalize_before = safe_getattr(args, "decoder_normalize_before", True)
    lm_presets.base_lm_architecture(args)


MT_PRESETS = {
    "transformer_adaptive_span": mt_presets.base_architecture,
    "transformer_adaptive_span_iwslt_de_en": mt_presets.transformer_iwslt_de_en,
    "transformer_adaptive_span_wmt_en_de": mt_presets.transformer_wmt_en_de,
}
# "transformer_lm_adaptive_span" itself is registered by register_model (a dataclass model).
LM_PRESETS = {"transformer_lm_adaptive_span_small": transformer_lm_adaptive_span_small}
for _arch, _preset in MT_PRESETS.items():
    register_model_architecture("transformer_adaptive_span", _arch)(_preset)
for _arch, _preset in LM_PRESETS.items():
    register_model_architecture("transformer_lm_adaptive_span", _arch)(_preset)
ARCHITECTURES = (*MT_PRESETS, "transformer_lm_adaptive_span", *LM_PRESETS)
