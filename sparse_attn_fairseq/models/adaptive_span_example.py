"""``--arch adaptive_span``: fairseq's examples/adaptive_span flags, built as ``transformer_lm_adaptive_span``.

So the commands of that example's README run with ``--user-dir`` pointing at this package. Differences: the model
is fairseq's Transformer LM with our attention (post-norm, as the paper's code); relative key positions and the
memory are those of transformer_lm_adaptive_span in truncated_bptt_lm; ``--emb-dropout`` is fairseq's ``--dropout``
(fairseq applies one dropout to the embeddings); ``--adapt-span-layer`` (one span per layer) is not offered.
"""

import argparse
from dataclasses import dataclass, field, fields

from fairseq.dataclass import FairseqDataclass
from fairseq.models import register_model

from sparse_attn_fairseq.models.transformer_adaptive_span import (
    TransformerAdaptiveSpanLanguageModel, TransformerAdaptiveSpanLMConfig,
)


@dataclass
class AdaptiveSpanExampleConfig(FairseqDataclass):
    """The flags of fairseq's examples/adaptive_span model, with its defaults."""

    vocab_size: int = field(default=50, metadata={"help": "unused: the dictionary gives the vocabulary"})
    d_model: int = field(default=256, metadata={"help": "model dimension (--decoder-embed-dim)"})
    n_head: int = field(default=4, metadata={"help": "attention heads (--decoder-attention-heads)"})
    d_inner: int = field(default=1024, metadata={"help": "feed-forward dimension (--decoder-ffn-embed-dim)"})
    n_layer: int = field(default=8, metadata={"help": "layers (--decoder-layers)"})
    attn_span: int = field(default=1024, metadata={"help": "largest span S (--adaptive-span-max)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout"})
    emb_dropout: float = field(default=0.0, metadata={"help": "embedding dropout: must equal --dropout here"})
    adapt_span_ramp: int = field(default=32, metadata={"help": "ramp R (--adaptive-span-ramp)"})
    adapt_span_init: float = field(default=0.0, metadata={"help": "initial span / S (--adaptive-span-init)"})
    aux_loss_scaler: float = field(default=2e-6, metadata={"help": "span penalty (--adaptive-span-loss)"})
    adapt_span_layer: bool = field(default=False, metadata={"help": "one span per layer: not supported"})


def transformer_lm_args(cfg) -> argparse.Namespace:
    """transformer_lm_adaptive_span's arguments (its defaults) for the example's flags."""
    problems = []
    if cfg.adapt_span_layer:
        problems.append("--adapt-span-layer: one span per layer is not supported (spans are per head)")
    if cfg.emb_dropout not in (0.0, cfg.dropout):
        problems.append(f"--emb-dropout={cfg.emb_dropout}: fairseq applies --dropout={cfg.dropout} to the "
                        "embeddings; set them equal")
    if problems:
        raise ValueError("; ".join(problems))
    defaults = {f.name: getattr(TransformerAdaptiveSpanLMConfig, f.name, None) for f in
                fields(TransformerAdaptiveSpanLMConfig)}
    args = argparse.Namespace(**{k: (None if isinstance(v, str) and v.startswith("${") else v)
                                 for k, v in defaults.items()})
    args.tpu = args.add_bos_token = False
    for name, value in (("decoder_layers", cfg.n_layer), ("decoder_embed_dim", cfg.d_model),
                        ("decoder_input_dim", cfg.d_model), ("decoder_output_dim", cfg.d_model),
                        ("decoder_ffn_embed_dim", cfg.d_inner), ("decoder_attention_heads", cfg.n_head),
                        ("dropout", cfg.dropout), ("adaptive_span_max", cfg.attn_span),
                        ("adaptive_span_ramp", cfg.adapt_span_ramp), ("adaptive_span_init", cfg.adapt_span_init),
                        ("adaptive_span_loss", cfg.aux_loss_scaler)):
        setattr(args, name, value)
    return args


@register_model("adaptive_span", dataclass=AdaptiveSpanExampleConfig)
class AdaptiveSpanExampleModel(TransformerAdaptiveSpanLanguageModel):
    """transformer_lm_adaptive_span built from fairseq's example flags (see the module docstring)."""

    @classmethod
    def build_model(cls, args, task):
        return super().build_model(transformer_lm_args(args), task)
