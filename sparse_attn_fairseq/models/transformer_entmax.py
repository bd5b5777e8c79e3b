"""Registrations of ``transformer_entmax`` (translation) and ``transformer_lm_entmax`` (language model).

Adaptively sparse Transformers (Correia, Niculae, Martins, EMNLP 2019): fairseq's Transformer with every attention
normalised by alpha-entmax with a learned alpha per head (or softmax, sparsemax, 1.5-entmax, a fixed alpha; see
options.py for the flags). Presets mirror fairseq's ``transformer`` and ``transformer_lm`` architectures.
"""

from dataclasses import dataclass

from fairseq.models import register_model
from fairseq.models.transformer_lm import TransformerLanguageModelConfig

from sparse_attn_fairseq.models.sparse_transformer import (
    SparseTransformerLanguageModel,
    SparseTransformerModel,
    register_presets,
)
from sparse_attn_fairseq.options import ENTMAX, EntmaxAttentionConfig, EntmaxLMAttentionConfig


@register_model("transformer_entmax")
class TransformerEntmaxModel(SparseTransformerModel):
    """fairseq's TransformerModel with sparse attention in the encoder, the decoder and between them."""

    attention_config = EntmaxAttentionConfig
    attention_method = ENTMAX


@dataclass
class TransformerEntmaxLMConfig(TransformerLanguageModelConfig, EntmaxLMAttentionConfig):
    """fairseq's transformer_lm flags plus the decoder normalizer and alpha flags."""


@register_model("transformer_lm_entmax", dataclass=TransformerEntmaxLMConfig)
class TransformerEntmaxLanguageModel(SparseTransformerLanguageModel):
    """fairseq's transformer_lm with sparse decoder self-attention."""

    attention_method = ENTMAX


ARCHITECTURES = register_presets("transformer_entmax", "transformer_lm_entmax")
