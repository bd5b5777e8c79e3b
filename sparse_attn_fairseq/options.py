"""The single reader of this package's attention flags -> a frozen, validated :class:`AttentionOptions`.

Flags (declared once, in the dataclasses below; fairseq turns them into ``--kebab-case`` CLI flags):

    --encoder-attention-normalizer          encoder self-attention        (default entmax_alpha)
    --decoder-attention-normalizer          decoder self-attention        (default entmax_alpha)
    --encoder-decoder-attention-normalizer  encoder-decoder attention     (default entmax_alpha)
    --entmax-alpha-init     initial alpha of entmax_alpha: a value in [1, 2], or "random" (default, as in the paper:
                            alpha = 1 + sigmoid(a), a ~ N(0, 1); Correia et al., EMNLP 2019, section 3.2)
    --entmax-alpha-min / --entmax-alpha-max   clamp range of the learned alpha (default 1.01, 2.0)
    --entmax-fixed-alpha    alpha of entmax_fixed (default 1.5)
    --entmax-alpha-lr-scale learning-rate multiplier of alpha: alpha = 1 + sigmoid(scale * a) (default 10; the paper: 1;
                            measured with bench/bench_convergence.py, see the README)

The ReLA models (transformer_rela, transformer_lm_rela) have the same per-type flags with choices rela/softmax and
default rela, plus (Zhang, Titov, Sennrich, EMNLP 2021, section 3.2; layers/rela_norm.py):

    --rela-norm-variant     output norm of the ReLA attention types: "gated" (ReLA-g, RMSNorm times
                            sigmoid(w * o), default) or "init" (ReLA-i, no gate, small random gain)
    --rela-norm-per-head    normalise each head's slice separately instead of all heads together (default off)
    --rela-gate-init        initial gate weight of ReLA-g: "glorot" (default; U(+-sqrt(3/d)), as in the authors'
                            code) or "ones"

Which normalizers a model offers and its default is its :class:`AttentionMethod` (ENTMAX, RELA or SPAN).

Every model also has:

    --attention-kernel      auto (default: the fastest kernel that accepts each input) or a kernel to force, e.g.
                            reference (plain PyTorch); kernels/registry.py; SPARSE_ATTN_FAIRSEQ_KERNEL overrides it
    --no-attention-stats    do not attach the statistics observers (zeros_*, alpha_*, null_*, span_* in the log)

Adaptive span models (Sukhbaatar et al., ACL 2019) add, for encoder and decoder self-attention:

    --adaptive-span-max     S, the largest span in tokens (default 1024; the _small LM preset: 8192)
    --adaptive-span-ramp    R, the soft ramp of the mask in tokens (default 32)
    --adaptive-span-init    initial z' = span / S, in [0, 1] (default 0, as in the paper)
    --adaptive-span-loss    span penalty coefficient per layer, per token (default 2e-6, as in the paper; 0: none)
    --adaptive-span-dynamic predict the span per token, z_t = S sigmoid(v . x_t + b) (default off)

and their normalizers default to softmax.

Values are checked once, at model construction (before training starts): every problem is collected and reported
together, each naming its flag and bad value (:class:`AttentionOptionsError`, a ValueError).
"""

# No `from __future__ import annotations`: omegaconf reads these dataclass field types at runtime.

from dataclasses import dataclass, field, make_dataclass
from typing import Any

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from sparse_attn_fairseq.kernels import AUTO, kernel_names
from sparse_attn_fairseq.layers.normalizers import ALPHA_NEAREST_ONE  # noqa: F401  (re-exported)
from sparse_attn_fairseq.layers.normalizers import normalizer_class, normalizer_names
from sparse_attn_fairseq.layers.rela_norm import GATE_INITS as RELA_GATE_INITS
from sparse_attn_fairseq.layers.rela_norm import VARIANTS as RELA_NORM_VARIANTS

# From the normalizer registry: the entmax models offer every normalizer that needs no output norm; the ReLA models
# those that need one (with its output norm) and stock softmax, per attention type.
ENTMAX_NORMALIZERS = tuple(n for n in normalizer_names() if not normalizer_class(n).needs_output_norm)
RELA_NORMALIZERS = tuple(n for n in normalizer_names() if normalizer_class(n).needs_output_norm) + ("softmax",)

# Attention types, in fairseq's vocabulary: encoder self, decoder self, encoder-decoder (fairseq's "encoder_attn").
ATTENTION_TYPES = ("encoder", "decoder", "encoder_decoder")
DEFAULT_NORMALIZER = "entmax_alpha"
NormalizerChoice = ChoiceEnum(ENTMAX_NORMALIZERS)
RelaNormalizerChoice = ChoiceEnum(RELA_NORMALIZERS)
RelaNormVariantChoice = ChoiceEnum(RELA_NORM_VARIANTS)
RelaGateInitChoice = ChoiceEnum(RELA_GATE_INITS)


@dataclass(frozen=True)
class AttentionMethod:
    """What a model family offers per attention type: the normalizer choices and the default."""

    normalizers: tuple[str, ...]
    default: str


ENTMAX = AttentionMethod(ENTMAX_NORMALIZERS, DEFAULT_NORMALIZER)
RELA = AttentionMethod(RELA_NORMALIZERS, "rela")
SPAN = AttentionMethod(ENTMAX_NORMALIZERS, "softmax")  # adaptive span composes with any of them


KernelChoice = ChoiceEnum((AUTO,) + kernel_names())


@dataclass
class AttentionRuntimeConfig(FairseqDataclass):
    """How every attention type runs: the kernel and the statistics in the log (flags of every model)."""

    attention_kernel: KernelChoice = field(  # type: ignore[valid-type]
        default=AUTO,
        metadata={"help": "kernel of the normalizers: auto (the fastest that accepts each input) or one to force "
                          "(the environment variable SPARSE_ATTN_FAIRSEQ_KERNEL overrides it)"},
    )
    no_attention_stats: bool = field(
        default=False, metadata={"help": "do not log attention sparsity, alpha and spans (zeros_*, alpha_*, span_*)"}
    )


def normalizer_flags_config(name: str, normalizers: tuple[str, ...]) -> type:
    """A fairseq dataclass with one field per flag of ``normalizers`` (their records' NormalizerFlag)."""
    flags = {f.name: f for n in normalizers for f in normalizer_class(n).flags}
    fields = [(f.name, f.type, field(default=f.default, metadata={"help": f.help})) for f in flags.values()]
    return make_dataclass(name, fields, bases=(FairseqDataclass,), namespace={"__module__": __name__})


# The flags of the entmax family's normalizers (--entmax-alpha-*, --entmax-fixed-alpha), shared by every attention
# type of the models that offer them.
EntmaxAlphaConfig = normalizer_flags_config("EntmaxAlphaConfig", ENTMAX_NORMALIZERS)


@dataclass
class EntmaxLMAttentionConfig(EntmaxAlphaConfig, AttentionRuntimeConfig):
    """Flags of the language model: it has decoder self-attention only."""

    decoder_attention_normalizer: NormalizerChoice = field(  # type: ignore[valid-type]
        default=DEFAULT_NORMALIZER, metadata={"help": "normalizer of the decoder self-attention"}
    )


@dataclass
class EntmaxAttentionConfig(EntmaxLMAttentionConfig):
    """Flags of the translation model: all three attention types."""

    encoder_attention_normalizer: NormalizerChoice = field(  # type: ignore[valid-type]
        default=DEFAULT_NORMALIZER, metadata={"help": "normalizer of the encoder self-attention"}
    )
    encoder_decoder_attention_normalizer: NormalizerChoice = field(  # type: ignore[valid-type]
        default=DEFAULT_NORMALIZER, metadata={"help": "normalizer of the encoder-decoder attention"}
    )


@dataclass
class RelaNormConfig(FairseqDataclass):
    """ReLA output-norm settings shared by every ReLA attention type (flags of both ReLA models)."""

    rela_norm_variant: RelaNormVariantChoice = field(  # type: ignore[valid-type]
        default="gated",
        metadata={"help": 'output norm of ReLA attention: "gated" (ReLA-g, RMSNorm * sigmoid(w * o)) or "init" '
                          "(ReLA-i, RMSNorm with a small random gain, no gate)"},
    )
    rela_norm_per_head: bool = field(
        default=False, metadata={"help": "RMSNorm each head's output separately instead of all heads together"}
    )
    rela_gate_init: RelaGateInitChoice = field(  # type: ignore[valid-type]
        default="glorot",
        metadata={"help": 'initial gate weight of ReLA-g: "ones", or "glorot" (U(+-sqrt(3/d)), the authors\' code)'},
    )


@dataclass
class AdaptiveSpanConfig(FairseqDataclass):
    """Adaptive span flags (translation and language models)."""

    adaptive_span_max: int = field(default=1024, metadata={"help": "largest attention span S in tokens"})
    adaptive_span_ramp: int = field(default=32, metadata={"help": "length R of the soft span mask's ramp in tokens"})
    adaptive_span_init: float = field(default=0.0, metadata={"help": "initial span as a fraction of S, in [0, 1]"})
    adaptive_span_loss: float = field(
        default=2e-6, metadata={"help": "span penalty: coefficient * S * mean(z') per layer, per token (0: none)"}
    )
    adaptive_span_dynamic: bool = field(
        default=False, metadata={"help": "one span per query token, S * sigmoid(v . x + b), instead of per head"}
    )


SPAN_POSITIONS = ("auto", "absolute", "relative")
SpanPositionsChoice = ChoiceEnum(SPAN_POSITIONS)
SpanMemoryChoice = ChoiceEnum(("span", "full"))


@dataclass
class StreamingSpanConfig(FairseqDataclass):
    """Adaptive span language model: positions, and the memory it keeps in the streaming task."""

    adaptive_span_positions: SpanPositionsChoice = field(  # type: ignore[valid-type]
        default="auto",
        metadata={"help": "relative: a learned key-position term q . e_d per distance d (the paper's), instead of "
                          "absolute position embeddings; auto: relative in --task truncated_bptt_lm, else absolute"},
    )
    adaptive_span_memory: SpanMemoryChoice = field(  # type: ignore[valid-type]
        default="span",
        metadata={"help": "memory of earlier tokens in --task truncated_bptt_lm: span (trimmed to what the learned "
                          "spans reach, the paper's adapt-span cache) or full (S tokens, all attended: the cost of a "
                          "Transformer-XL with that context)"},
    )


@dataclass
class RelaLMAttentionConfig(RelaNormConfig, AttentionRuntimeConfig):
    """Flags of the ReLA language model: decoder self-attention only."""

    decoder_attention_normalizer: RelaNormalizerChoice = field(  # type: ignore[valid-type]
        default="rela", metadata={"help": "normalizer of the decoder self-attention"}
    )


@dataclass
class SpanLMAttentionConfig(EntmaxLMAttentionConfig, AdaptiveSpanConfig, StreamingSpanConfig):
    """Language model with adaptive span: softmax by default."""

    decoder_attention_normalizer: NormalizerChoice = field(  # type: ignore[valid-type]
        default="softmax", metadata={"help": "normalizer of the decoder self-attention"}
    )


@dataclass
class RelaAttentionConfig(RelaLMAttentionConfig):
    """Flags of the ReLA translation model: all three attention types."""

    encoder_attention_normalizer: RelaNormalizerChoice = field(  # type: ignore[valid-type]
        default="rela", metadata={"help": "normalizer of the encoder self-attention"}
    )
    encoder_decoder_attention_normalizer: RelaNormalizerChoice = field(  # type: ignore[valid-type]
        default="rela", metadata={"help": "normalizer of the encoder-decoder attention"}
    )


@dataclass
class SpanAttentionConfig(EntmaxAttentionConfig, AdaptiveSpanConfig):
    """Translation model with adaptive span: softmax by default in all three attention types."""

    decoder_attention_normalizer: NormalizerChoice = field(  # type: ignore[valid-type]
        default="softmax", metadata={"help": "normalizer of the decoder self-attention"}
    )
    encoder_attention_normalizer: NormalizerChoice = field(  # type: ignore[valid-type]
        default="softmax", metadata={"help": "normalizer of the encoder self-attention"}
    )
    encoder_decoder_attention_normalizer: NormalizerChoice = field(  # type: ignore[valid-type]
        default="softmax", metadata={"help": "normalizer of the encoder-decoder attention"}
    )


class AttentionOptionsError(ValueError):
    """Invalid attention flags; the message lists every problem with its flag and value."""


@dataclass(frozen=True)
class NormalizerSpec:
    """What one attention type normalises with: a registry name and that normalizer's options, and the options of
    an output norm before out_proj (layers.rela_norm.RelaOutputNorm) or None for no output norm."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    output_norm: tuple[tuple[str, Any], ...] | None = None
    kernel: str = AUTO

    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    def output_norm_kwargs(self) -> dict[str, Any] | None:
        return None if self.output_norm is None else dict(self.output_norm)


@dataclass(frozen=True)
class SpanOptions:
    """Validated adaptive span settings (see :class:`AdaptiveSpanConfig`); keyword arguments of AdaptiveSpan."""

    max_span: int
    ramp: int
    init_span: float
    loss_coefficient: float
    dynamic: bool


@dataclass(frozen=True)
class AttentionOptions:
    """Validated normalizer per attention type (None where the model has no such attention), and the adaptive span
    of the self-attentions (None: no span)."""

    encoder: NormalizerSpec | None
    decoder: NormalizerSpec | None
    encoder_decoder: NormalizerSpec | None
    span: SpanOptions | None = None
    stats: bool = True  # attach the statistics observers

    def spec(self, attention_type: str) -> NormalizerSpec:
        spec = getattr(self, attention_type)
        if spec is None:
            raise ValueError(f"no normalizer was configured for {attention_type} attention")
        return spec


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _read_normalizer_options(args: Any, normalizers: tuple[str, ...], problems: list[str]) -> dict[str, dict]:
    """Each offered normalizer's constructor options, read from its flags (missing flags: their defaults); every
    flag is validated, whichever normalizer is chosen."""
    options = {}
    for name in normalizers:
        cls = normalizer_class(name)
        values = {flag.name: getattr(args, flag.name, flag.default) for flag in cls.flags}
        options[name] = cls.options_from_flags(values, problems)
    return options


def _read_rela_norm(args: Any, problems: list[str]) -> tuple[tuple[str, Any], ...]:
    defaults = RelaNormConfig()
    variant = str(getattr(args, "rela_norm_variant", defaults.rela_norm_variant))
    per_head = getattr(args, "rela_norm_per_head", defaults.rela_norm_per_head)
    gate_init = str(getattr(args, "rela_gate_init", defaults.rela_gate_init))
    if variant not in RELA_NORM_VARIANTS:
        problems.append(f"{_flag('rela_norm_variant')}={variant!r}: choose one of {', '.join(RELA_NORM_VARIANTS)}")
    if not isinstance(per_head, bool):
        problems.append(f"{_flag('rela_norm_per_head')}={per_head!r}: expected true or false")
    if gate_init not in RELA_GATE_INITS:
        problems.append(f"{_flag('rela_gate_init')}={gate_init!r}: choose one of {', '.join(RELA_GATE_INITS)}")
    return (("variant", variant), ("per_head", bool(per_head)), ("gate_init", gate_init))


def _spec(name: str, options: dict[str, Any], rela_norm: tuple[tuple[str, Any], ...], kernel: str) -> NormalizerSpec:
    output_norm = rela_norm if normalizer_class(name).needs_output_norm else None
    return NormalizerSpec(name, tuple(options.items()), output_norm=output_norm, kernel=kernel)


def _read_span_options(args: Any, problems: list[str]) -> SpanOptions:
    defaults = AdaptiveSpanConfig()
    values = {name: getattr(args, name, getattr(defaults, name)) for name in AdaptiveSpanConfig.__dataclass_fields__}
    checks = [
        ("adaptive_span_max", lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1"),
        ("adaptive_span_ramp", lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1"),
        ("adaptive_span_init", lambda v: isinstance(v, (int, float)) and 0.0 <= v <= 1.0, "must lie in [0, 1]"),
        ("adaptive_span_loss", lambda v: isinstance(v, (int, float)) and v >= 0.0, "must be >= 0"),
    ]
    for name, ok, rule in checks:
        if not ok(values[name]):
            problems.append(f"{_flag(name)}={values[name]!r}: {rule}")
    return SpanOptions(values["adaptive_span_max"], values["adaptive_span_ramp"], values["adaptive_span_init"],
                       values["adaptive_span_loss"], bool(values["adaptive_span_dynamic"]))


def read_attention_options(args: Any, attention_types: tuple[str, ...] = ATTENTION_TYPES,
                           method: AttentionMethod = ENTMAX, span: bool = False) -> AttentionOptions:
    """Read and validate the flags of ``attention_types`` (and the adaptive span flags if ``span``) from fairseq args
    (a Namespace or a DictConfig).

    ``method`` gives the normalizers the model offers and their default. Missing flags (older checkpoints) take
    their defaults.

    Raises:
        AttentionOptionsError: listing every invalid flag and its value.
    """
    problems: list[str] = []
    kernel = str(getattr(args, "attention_kernel", AUTO))
    if kernel not in (AUTO,) + kernel_names():
        problems.append(f"{_flag('attention_kernel')}={kernel!r}: choose one of {', '.join((AUTO,) + kernel_names())}")
    normalizer_options = _read_normalizer_options(args, method.normalizers, problems)
    needs_norm = any(normalizer_class(n).needs_output_norm for n in method.normalizers)
    rela_norm = _read_rela_norm(args, problems) if needs_norm else ()
    specs: dict[str, NormalizerSpec | None] = dict.fromkeys(ATTENTION_TYPES)
    for attention_type in attention_types:
        key = f"{attention_type}_attention_normalizer"
        name = str(getattr(args, key, method.default))
        if name not in method.normalizers:
            problems.append(f"{_flag(key)}={name!r}: choose one of {', '.join(method.normalizers)}")
            continue
        specs[attention_type] = _spec(name, normalizer_options[name], rela_norm, kernel)
    span_options = _read_span_options(args, problems) if span else None
    if problems:
        raise AttentionOptionsError("invalid attention options: " + "; ".join(problems))
    return AttentionOptions(**specs, span=span_options, stats=not getattr(args, "no_attention_stats", False))
