"""Registrations of ``transformer_rela`` (translation) and ``transformer_lm_rela`` (language model).

Rectified linear attention (Zhang, Titov, Sennrich, EMNLP 2021): fairseq's post-norm Transformer with every attention
weight relu(q.k / sqrt(d)), unnormalised over keys (rows may be all zero: null attention), and the attention output
RMS-normalised before out_proj, gated by default (ReLA-g). Each attention type can be switched back to softmax; see
options.py for the flags. Presets mirror fairseq's ``transformer`` and ``transformer_lm`` architectures.
"""

from dataclasses import dataclass

from fairseq.models import register_model
from fairseq.models.transformer_lm import TransformerLanguageModelConfig

from sparse_attn_fairseq.models.sparse_transformer import (
    SparseTransformerLanguageModel,
    SparseTransformerModel,
    register_presets,
)
from sparse_attn_fairseq.options import RELA, RelaAttentionConfig, RelaLMAttentionConfig


@register_model("transformer_rela")
class TransformerRelaModel(SparseTransformerModel):
    """fairseq's TransformerModel with ReLA (or softmax, per type) in the encoder, the decoder and between them."""

    attention_config = RelaAttentionConfig
    attention_method = RELA


@dataclass
class TransformerRelaLMConfig(TransformerLanguageModelConfig, RelaLMAttentionConfig):
    """fairseq's transformer_lm flags plus the decoder normalizer and ReLA output-norm flags."""


@register_model("transformer_lm_rela", dataclass=TransformerRelaLMConfig)
class TransformerRelaLanguageModel(SparseTransformerLanguageModel):
    """fairseq's transformer_lm with ReLA decoder self-attention."""

    attention_method = RELA


ARCHITECTURES = register_presets("transformer_rela", "transformer_lm_rela")
