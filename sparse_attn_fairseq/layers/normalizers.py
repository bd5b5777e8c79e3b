"""Registry of attention normalizers: name -> module mapping scores (bsz, num_heads, tgt_len, src_len) to weights.

A new normalizer is one function in functional/ (its reference) plus one registered module here, whose class
attributes declare its capabilities; the attention module never changes. The weights are computed by the kernel
the kernel registry (kernels/) chooses for each input: the reference function, or a faster kernel that implements
the normalizer. Unknown or duplicate names raise and list the valid ones; options are validated once, at
construction.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from sparse_attn_fairseq.functional.entmax import entmax15, entmax_alpha, softmax_masked, sparsemax
from sparse_attn_fairseq.functional.host import reads_are_free
from sparse_attn_fairseq.functional.rela import rela_weights
from sparse_attn_fairseq.kernels import AUTO, get_kernel, normalize, register_reference

_REGISTRY: dict[str, type[nn.Module]] = {}
# The alpha closest to 1 (other than 1 itself, softmax) solved to float32 accuracy; at 1.0001 the error is 5e-5
# (tests/functional/test_entmax.py::test_alpha_nearest_one_is_solved_to_float32_accuracy).
ALPHA_NEAREST_ONE = 1.001


@dataclass(frozen=True)
class NormalizerFlag:
    """A command-line flag of a normalizer (fairseq spells ``name`` as --kebab-case): options.py generates the
    models' config fields from these, and the normalizer's ``options_from_flags`` validates and reads them."""

    name: str
    type: type
    default: Any
    help: str

    @property
    def cli(self) -> str:
        return "--" + self.name.replace("_", "-")


def register_normalizer(name: str, reference: Callable) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a normalizer under ``name``, with its reference function
    ``reference(scores, mask, alpha) -> weights`` (the kernel every device can run). Raises ValueError on a duplicate
    name."""

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"normalizer {name!r} is already registered (registered: {', '.join(sorted(_REGISTRY))})")
        register_reference(name, reference)
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return register


def normalizer_class(name: str) -> type[nn.Module]:
    """The registered class of ``name``: its capabilities (class attributes), flags and options."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown normalizer {name!r}; valid: {', '.join(normalizer_names())}")
    return _REGISTRY[name]


def normalizer_names() -> tuple[str, ...]:
    """Registered names, sorted (use these as CLI choices)."""
    return tuple(sorted(_REGISTRY))


def build_normalizer(name: str, num_heads: int, kernel: str = AUTO, **options) -> nn.Module:
    """Instantiate the normalizer ``name`` for ``num_heads`` heads with its validated options; ``kernel`` forces a
    kernel of the kernel registry (``auto``: the fastest that accepts each input).

    Raises:
        ValueError: unknown name (listing the valid ones), unknown option or kernel, or invalid option values.
    """
    if kernel != AUTO:
        get_kernel(kernel)  # raises for an unknown name
    if name not in _REGISTRY:
        raise ValueError(f"unknown normalizer {name!r}; valid: {', '.join(normalizer_names())}")
    cls = _REGISTRY[name]
    valid = [p for p in inspect.signature(cls).parameters if p != "num_heads"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"normalizer {name!r} has no option(s) {unknown}; its options are: {valid or 'none'}")
    module = cls(num_heads, **options)
    module.kernel = kernel
    return module


def _raise_problems(name: str, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"invalid options for normalizer {name!r}: " + "; ".join(problems))


class _Normalizer(nn.Module):
    """Shared shape check and kernel dispatch; a subclass declares its capabilities, flags and alpha.

    Capabilities (class attributes):
    ``sums_to_one``: rows of the output are distributions, so an adaptive span renormalises them after its mask.
    ``exp_family``: weights are proportional to exp(scores), so weights * m renormalised equals the weights of
    scores + log m (an adaptive span then adds log m instead of masking after the normaliser).
    ``needs_output_norm``: unnormalised weights that need an output norm before out_proj (ReLA); offered by the
    models that build one.
    ``allows_null_rows``: a row may be all zero ("null attention"), logged as null_<key>.
    ``flags``: its command-line flags; ``options_from_flags`` turns their values into constructor options.
    """

    sums_to_one = True
    exp_family = False
    needs_output_norm = False
    allows_null_rows = False
    flags: tuple[NormalizerFlag, ...] = ()
    registry_name = ""  # set by register_normalizer
    kernel = AUTO  # the kernel to force, or AUTO

    def __init__(self, num_heads: int):
        super().__init__()
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got num_heads={num_heads!r}")
        self.num_heads = num_heads

    def forward(self, scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """scores (bsz, num_heads, tgt_len, src_len), mask bool broadcastable (True = masked) -> same shape/dtype."""
        if scores.ndim != 4 or scores.shape[1] != self.num_heads:
            raise ValueError(
                f"{type(self).__name__} expects scores (bsz, {self.num_heads}, tgt_len, src_len), "
                f"got {tuple(scores.shape)}"
            )
        return normalize(self.registry_name, scores, mask, self.kernel_alpha(), self.kernel)

    def kernel_alpha(self):
        """The alpha argument of the kernels: None, a float, or one value per head (num_heads, 1, 1)."""
        return None

    @classmethod
    def options_from_flags(cls, values: dict[str, Any], problems: list[str]) -> dict[str, Any]:
        """Constructor options from the values of ``cls.flags`` (by name); each invalid value is appended to
        ``problems`` as "--flag=value: why"."""
        return {}

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"


@register_normalizer("softmax", lambda scores, mask, alpha: softmax_masked(scores, mask))
class SoftmaxNormalizer(_Normalizer):
    """softmax over keys; fully masked rows give zeros."""

    exp_family = True


@register_normalizer("sparsemax", lambda scores, mask, alpha: sparsemax(scores, mask))
class SparsemaxNormalizer(_Normalizer):
    """sparsemax over keys (alpha-entmax with alpha = 2)."""


@register_normalizer("entmax15", lambda scores, mask, alpha: entmax15(scores, mask))
class Entmax15Normalizer(_Normalizer):
    """1.5-entmax over keys."""


@register_normalizer("entmax_fixed", lambda scores, mask, alpha: entmax_alpha(scores, alpha, mask))
class EntmaxFixedNormalizer(_Normalizer):
    """alpha-entmax with one fixed alpha in [1, 2] for every head (no parameter)."""

    flags = (NormalizerFlag("entmax_fixed_alpha", float, 1.5, "alpha of entmax_fixed, in [1, 2]"),)

    @classmethod
    def options_from_flags(cls, values, problems):
        fixed = values["entmax_fixed_alpha"]
        problems.extend(_alpha_value_problems(cls.flags[0], fixed, "or 1 for softmax"))
        return {"alpha": float(fixed) if isinstance(fixed, (int, float)) else fixed}

    def __init__(self, num_heads: int, alpha: float = 1.5):
        super().__init__(num_heads)
        problems = [] if isinstance(alpha, (int, float)) and 1.0 <= alpha <= 2.0 else [f"alpha={alpha!r} not in [1, 2]"]
        _raise_problems("entmax_fixed", problems)
        self.fixed_alpha = float(alpha)

    def alpha(self) -> torch.Tensor:
        """Per-head alpha, shape (num_heads,)."""
        return torch.full((self.num_heads,), self.fixed_alpha)

    def kernel_alpha(self):
        return self.fixed_alpha

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, alpha={self.fixed_alpha}"


@register_normalizer("entmax_alpha", lambda scores, mask, alpha: entmax_alpha(scores, alpha, mask))
class EntmaxAlphaNormalizer(_Normalizer):
    """alpha-entmax with a learned alpha per head: alpha = clamp(1 + sigmoid(a), *clamp) (Correia et al., 2019, s. 3).

    The raw ``a`` is the parameter and alpha is recomputed every forward, so alpha can never leave the clamp range.
    ``init`` is an alpha value (a = logit(alpha - 1)) or "random" (a ~ N(0, 1), as in the paper). With ``lr_scale`` s
    the logit is s * a: an optimiser whose step does not depend on the gradient's scale (Adam) moves alpha s times
    faster, as a learning rate s times larger for alpha alone would.
    """

    flags = (
        NormalizerFlag("entmax_alpha_init", str, "random",
                       'initial alpha of entmax_alpha, in [1, 2], or "random" (alpha = 1 + sigmoid(N(0, 1)))'),
        NormalizerFlag("entmax_alpha_min", float, 1.01, "lower clamp of the learned alpha (>= 1)"),
        NormalizerFlag("entmax_alpha_max", float, 2.0, "upper clamp of the learned alpha (<= 2)"),
        NormalizerFlag("entmax_alpha_lr_scale", float, 10.0,
                       "learning-rate multiplier of the alpha parameters (> 0): alpha = 1 + sigmoid(scale * a), so "
                       "Adam's steps on the logit are scale times larger"),
    )

    @classmethod
    def options_from_flags(cls, values, problems):
        init_flag, low_flag, high_flag, scale_flag = cls.flags
        lr_scale, low, high = values["entmax_alpha_lr_scale"], values["entmax_alpha_min"], values["entmax_alpha_max"]
        if not isinstance(lr_scale, (int, float)) or not 0.0 < lr_scale < math.inf:
            problems.append(f"{scale_flag.cli}={lr_scale!r}: must be a positive number")
        init = _read_init(init_flag, values["entmax_alpha_init"], problems)
        problems.extend(_alpha_value_problems(low_flag, low, "", lowest=True))
        problems.extend(_alpha_value_problems(high_flag, high, "or 1 for softmax"))
        numbers = isinstance(low, (int, float)) and isinstance(high, (int, float))
        if numbers and not low < high:
            problems.append(f"{low_flag.cli}={low!r} must be below {high_flag.cli}={high!r}")
        elif numbers and isinstance(init, float) and 1.0 <= init <= 2.0 and not low <= init <= high:
            problems.append(f"{init_flag.cli}={init!r} lies outside the clamp range "
                            f"[{low_flag.cli}={low}, {high_flag.cli}={high}]")
        clamp = (float(low), float(high)) if numbers else (low, high)
        return {"init": init, "clamp": clamp, "lr_scale": float(lr_scale) if isinstance(lr_scale, (int, float))
                else lr_scale}

    def __init__(self, num_heads: int, init: float | str = 1.5, clamp: tuple[float, float] = (1.01, 2.0),
                 lr_scale: float = 1.0):
        super().__init__(num_heads)
        problems = _alpha_problems(init, clamp)
        if not isinstance(lr_scale, (int, float)) or not 0.0 < lr_scale < math.inf:
            problems.append(f"lr_scale={lr_scale!r} must be a positive number")
        _raise_problems("entmax_alpha", problems)
        self.init, self.clamp, self.lr_scale = init, (float(clamp[0]), float(clamp[1])), float(lr_scale)
        self.a = nn.Parameter(torch.empty(num_heads))
        # saved with the weights, so a checkpoint says which scale its `a` was trained under (see _load_from_state_dict)
        self.register_buffer("a_scale", torch.tensor(self.lr_scale))
        self.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Load ``a`` trained under any scale (checkpoints from before the scale existed: 1) with alpha unchanged."""
        a_key, scale_key = prefix + "a", prefix + "a_scale"
        if a_key in state_dict:
            saved_scale = float(state_dict[scale_key]) if scale_key in state_dict else 1.0
            if saved_scale != self.lr_scale:
                state_dict[a_key] = state_dict[a_key] * (saved_scale / self.lr_scale)
            state_dict[scale_key] = torch.tensor(self.lr_scale)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "random":
                self.a.normal_(0.0, 1.0 / self.lr_scale)
            else:
                frac = min(max(float(self.init) - 1.0, 1e-6), 1.0 - 1e-6)
                self.a.fill_(math.log(frac / (1.0 - frac)) / self.lr_scale)

    def alpha(self) -> torch.Tensor:
        """Per-head alpha, shape (num_heads,), differentiable w.r.t. ``a`` inside the clamp range."""
        logit = self.a if self.lr_scale == 1.0 else self.a * self.lr_scale
        return (1.0 + torch.sigmoid(logit)).clamp(*self.clamp)

    def kernel_alpha(self):
        if torch.is_grad_enabled() and self.a.requires_grad or not reads_are_free(self.a):
            return self.alpha().view(self.num_heads, 1, 1)  # (on a GPU, comparing `a` below would synchronise)
        # CPU inference (decoding calls this per layer and step): recomputed only when `a` changed, compared by value
        # (writes through .data, as fairseq's fp16 optimizer makes, do not bump a tensor's version)
        cached_a = self.__dict__.get("_cached_a")
        if cached_a is None or cached_a.dtype != self.a.dtype or not torch.equal(cached_a, self.a):
            self.__dict__["_cached_a"] = self.a.detach().clone()
            self.__dict__["_alpha_cache"] = self.alpha().detach().view(self.num_heads, 1, 1)
        return self.__dict__["_alpha_cache"]

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, init={self.init!r}, clamp={self.clamp}, lr_scale={self.lr_scale}"


def _read_init(flag: NormalizerFlag, init, problems: list[str]):
    """--entmax-alpha-init: "random" or a number in [1, 2] (as a float)."""
    if str(init) == "random":
        return "random"
    try:
        init = float(init)
    except (TypeError, ValueError):
        problems.append(f'{flag.cli}={init!r}: expected a number in [1, 2] or "random"')
        return None
    if not 1.0 <= init <= 2.0:
        problems.append(f'{flag.cli}={init!r}: must lie in [1, 2] or be "random"')
    return init


def _alpha_value_problems(flag: NormalizerFlag, value, alternative: str, lowest: bool = False) -> list[str]:
    """An alpha flag's value must lie in [1, 2] and not in (1, ALPHA_NEAREST_ONE) (not solved to float32 accuracy);
    with ``lowest`` (a clamp's low end) 1 itself is refused too."""
    if not isinstance(value, (int, float)) or not 1.0 <= value <= 2.0:
        return [f"{flag.cli}={value!r}: must lie in [1, 2]"]
    if 1.0 < value < ALPHA_NEAREST_ONE or (lowest and value < ALPHA_NEAREST_ONE):
        return [f"{flag.cli}={value!r}: alpha in (1, {ALPHA_NEAREST_ONE}) is not solved to float32 accuracy "
                f"(p ~ x^(1/(alpha-1)) with exponents over 1000); use >= {ALPHA_NEAREST_ONE}"
                + (f", {alternative}" if alternative else "")]
    return []


def _alpha_problems(init, clamp) -> list[str]:
    problems = []
    ok_clamp = isinstance(clamp, (tuple, list)) and len(clamp) == 2 and 1.0 <= clamp[0] < clamp[1] <= 2.0
    if not ok_clamp:
        problems.append(f"clamp={clamp!r} must be (low, high) with 1 <= low < high <= 2")
    if init != "random" and not (isinstance(init, (int, float)) and 1.0 <= init <= 2.0):
        problems.append(f"init={init!r} must be an alpha in [1, 2] or 'random'")
    return problems


@register_normalizer("rela", lambda scores, mask, alpha: rela_weights(scores, mask))
class RelaNormalizer(_Normalizer):
    """ReLA weights relu(scores), masked entries zeroed before the relu (Zhang et al., EMNLP 2021); unnormalised."""

    allows_null_rows = True  # a row may be all zero ("null attention"); logged as null_<key>
    sums_to_one = False
    needs_output_norm = True
