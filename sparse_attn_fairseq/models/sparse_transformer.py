"""Shared, unregistered model classes: fairseq's Transformer and Transformer LM with our attention.

Each method's file (transformer_entmax.py, transformer_rela.py, transformer_adaptive_span.py) subclasses these, names
its flags dataclass, its :class:`~sparse_attn_fairseq.options.AttentionMethod` and whether it has adaptive spans, and
registers the result and its presets.
"""

from typing import Any, ClassVar, Dict

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model_architecture
from fairseq.models import transformer_lm as lm_presets
from fairseq.models.transformer import TransformerConfig, TransformerModel
from fairseq.models.transformer import transformer_legacy as mt_presets
from fairseq.models.transformer_lm import TransformerLanguageModel

from sparse_attn_fairseq.modules.transformer_layers import SparseTransformerDecoder, SparseTransformerEncoder
from sparse_attn_fairseq.options import ENTMAX, AttentionMethod, EntmaxAttentionConfig, read_attention_options


class SparseTransformerModel(TransformerModel):
    """fairseq's TransformerModel with our attention in the encoder, the decoder and between them."""

    attention_config: ClassVar[Any] = EntmaxAttentionConfig  # the flags dataclass of the method
    attention_method: ClassVar[AttentionMethod] = ENTMAX
    attention_span: ClassVar[bool] = False  # the adaptive span flags and modules

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        gen_parser_from_dataclass(parser, cls.attention_config())

    @classmethod
    def read_options(cls, args):
        return read_attention_options(args, method=cls.attention_method, span=cls.attention_span)

    @classmethod
    def build_model(cls, args, task):
        cls.read_options(args)  # fail on bad flags before any parameter is built
        return super().build_model(args, task)

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        # args: a Namespace, or fairseq's TransformerConfig that carries the namespace's extra keys (our flags).
        cfg = TransformerConfig.from_namespace(args)
        return SparseTransformerEncoder(cfg, src_dict, embed_tokens, cls.read_options(args))

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        no_encoder_attn = getattr(args, "no_cross_attention", False)
        return SparseTransformerDecoder(cfg, tgt_dict, embed_tokens, cls.read_options(args),
                                        no_encoder_attn=no_encoder_attn)


class SparseTransformerLanguageModel(TransformerLanguageModel):
    """fairseq's transformer_lm with our decoder self-attention (register it with the method's dataclass)."""

    attention_method: ClassVar[AttentionMethod] = ENTMAX
    attention_span: ClassVar[bool] = False

    @classmethod
    def build_model(cls, args, task):
        options = read_attention_options(args, ("decoder",), cls.attention_method, cls.attention_span)  # fail early
        # fairseq builds the LM's embeddings (plain, adaptive or character) inline in build_model; reuse them from a
        # stock model rather than copying that code. The stock decoder is built once and dropped.
        stock = super().build_model(args, task)
        decoder = SparseTransformerDecoder(TransformerConfig.from_namespace(args), task.target_dictionary,
                                           stock.decoder.embed_tokens, options, no_encoder_attn=True)
        return cls(decoder)


def register_presets(mt_model: str, lm_model: str) -> tuple:
    """Register fairseq's translation and LM presets under our model names; returns every architecture name.

    ``<mt_model>`` and ``<mt_model>_{iwslt_de_en, wmt_en_de, vaswani_wmt_en_de_big}`` mirror fairseq's transformer
    presets; ``<lm_model>_{big, wiki103, gpt}`` its LM presets (``<lm_model>`` itself is registered by
    register_model with a dataclass: its defaults are the base LM).
    """
    mt: Dict[str, Any] = {
        mt_model: mt_presets.base_architecture,
        f"{mt_model}_iwslt_de_en": mt_presets.transformer_iwslt_de_en,
        f"{mt_model}_wmt_en_de": mt_presets.transformer_wmt_en_de,
        f"{mt_model}_vaswani_wmt_en_de_big": mt_presets.transformer_vaswani_wmt_en_de_big,
    }
    lm = {
        f"{lm_model}_big": lm_presets.transformer_lm_big,
        f"{lm_model}_wiki103": lm_presets.transformer_lm_baevski_wiki103,
        f"{lm_model}_gpt": lm_presets.transformer_lm_gpt,
    }
    for arch, preset in mt.items():
        register_model_architecture(mt_model, arch)(preset)
    for arch, preset in lm.items():
        register_model_architecture(lm_model, arch)(preset)
    return (*mt, lm_model, *lm)
