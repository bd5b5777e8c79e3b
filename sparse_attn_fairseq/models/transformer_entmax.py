"""Registrations of ``transformer_entmax`` (translation) and ``transformer_lm_entmax`` (language model).

Adaptively sparse Transformers (Correia, Niculae, Martins, EMNLP 2019): fairseq's Transformer with every attention
normalised by alpha-entmax with a learned alpha per head (or softmax, sparsemax, 1.5-entmax, a fixed alpha; see
options.py for the flags). Presets mirror fairseq's ``transformer`` and ``transformer_lm`` architectures.
"""

from dataclasses import dataclass

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModel
from fairseq.models.transformer import transformer_legacy as mt_presets
from fairseq.models import transformer_lm as lm_presets
from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig

from sparse_attn_fairseq.modules.transformer_layers import SparseTransformerDecoder, SparseTransformerEncoder
from sparse_attn_fairseq.options import EntmaxAttentionConfig, EntmaxLMAttentionConfig, read_attention_options


@register_model("transformer_entmax")
class TransformerEntmaxModel(TransformerModel):
    """fairseq's TransformerModel with sparse attention in the encoder, the decoder and between them."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        gen_parser_from_dataclass(parser, EntmaxAttentionConfig())

    @classmethod
    def build_model(cls, args, task):
        read_attention_options(args)  # fail on bad flags before any parameter is built
        return super().build_model(args, task)

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        # args: a Namespace, or fairseq's TransformerConfig that carries the namespace's extra keys (our flags).
        cfg = TransformerConfig.from_namespace(args)
        return SparseTransformerEncoder(cfg, src_dict, embed_tokens, read_attention_options(args))

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        no_encoder_attn = getattr(args, "no_cross_attention", False)
        return SparseTransformerDecoder(cfg, tgt_dict, embed_tokens, read_attention_options(args),
                                        no_encoder_attn=no_encoder_attn)


@dataclass
class TransformerEntmaxLMConfig(TransformerLanguageModelConfig, EntmaxLMAttentionConfig):
    """fairseq's transformer_lm flags plus the decoder normalizer and alpha flags."""


@register_model("transformer_lm_entmax", dataclass=TransformerEntmaxLMConfig)
class TransformerEntmaxLanguageModel(TransformerLanguageModel):
    """fairseq's transformer_lm with sparse decoder self-attention."""

    @classmethod
    def build_model(cls, args, task):
        options = read_attention_options(args, ("decoder",))  # fail on bad flags first
        # fairseq builds the LM's embeddings (plain, adaptive or character) inline in build_model; reuse them from a
        # stock model rather than copying that code. The stock decoder is built once and dropped.
        stock = super().build_model(args, task)
        decoder = SparseTransformerDecoder(TransformerConfig.from_namespace(args), task.target_dictionary,
                                           stock.decoder.embed_tokens, options, no_encoder_attn=True)
        return cls(decoder)


MT_PRESETS = {
    "transformer_entmax": mt_presets.base_architecture,
    "transformer_entmax_iwslt_de_en": mt_presets.transformer_iwslt_de_en,
    "transformer_entmax_wmt_en_de": mt_presets.transformer_wmt_en_de,
    "transformer_entmax_vaswani_wmt_en_de_big": mt_presets.transformer_vaswani_wmt_en_de_big,
}
# "transformer_lm_entmax" itself is registered by register_model (a dataclass model): its defaults are the base LM.
LM_PRESETS = {
    "transformer_lm_entmax_big": lm_presets.transformer_lm_big,
    "transformer_lm_entmax_wiki103": lm_presets.transformer_lm_baevski_wiki103,
    "transformer_lm_entmax_gpt": lm_presets.transformer_lm_gpt,
}
for _arch, _preset in MT_PRESETS.items():
    register_model_architecture("transformer_entmax", _arch)(_preset)
for _arch, _preset in LM_PRESETS.items():
    register_model_architecture("transformer_lm_entmax", _arch)(_preset)
ARCHITECTURES = (*MT_PRESETS, "transformer_lm_entmax", *LM_PRESETS)
