"""Kernel registry: which implementation computes a normalizer's weights for given inputs.

A kernel is one record (:class:`Kernel`): the normalizers it implements, the devices, dtypes and features it
supports, whether it is available in this process (a compiled op may be missing), and a function
``fn(normalizer, scores, mask, alpha) -> weights`` on the last dim. The plain PyTorch kernel ``reference`` implements
every normalizer on every device and is always available; faster kernels register with a higher priority and are
chosen when they accept the inputs.

The choice can be forced: per call (``kernel=``, from the models' ``--attention-kernel`` flag) or for the whole
process with the environment variable ``SPARSE_ATTN_FAIRSEQ_KERNEL`` (which wins). A forced kernel computes every
normalizer it implements (the others choose as usual); if it refuses an input (device, dtype, a feature) that is an
error. When no kernel accepts an input, :class:`NoKernelError` lists why each one refused.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

FORCE_ENV = "SPARSE_ATTN_FAIRSEQ_KERNEL"
AUTO = "auto"
REFERENCE = "reference"
# Features an input may need beyond computing the weights and their gradient for the scores.
ALPHA_GRAD = "alpha_grad"  # gradient for a learned alpha
FEATURES = (ALPHA_GRAD,)


class NoKernelError(RuntimeError):
    """No registered kernel accepts the inputs (or the forced one refuses them); the message says why, per kernel."""


@dataclass(frozen=True)
class Kernel:
    """One implementation of one or more normalizers.

    ``fn(normalizer, scores, mask, alpha)``: scores (..., n) in any float dtype the kernel declares, mask a bool
    tensor broadcastable to them (True = masked) or None, alpha None, a float or a tensor broadcastable to
    scores.shape[:-1] + (1,); returns weights like scores. ``unavailable()`` gives the reason the kernel cannot run
    in this process, or None.
    """

    name: str
    normalizers: Optional[frozenset[str]]  # None: every normalizer with a reference function (the reference kernel)
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    features: frozenset[str]
    fn: Callable
    priority: int = 0
    unavailable: Callable[[], Optional[str]] = field(default=lambda: None)
    # warn (once) when the kernel would take an input but cannot run here, so a slower kernel computes it; off for a
    # kernel that says so itself (fused_cpu warns at import)
    warns_when_unavailable: bool = True
    # devices it runs on only when forced, never by choice (the Triton kernels on CPU under triton's interpreter)
    forced_devices: frozenset[str] = frozenset()

    def implements(self, normalizer: str) -> bool:
        return normalizer in (_REFERENCES if self.normalizers is None else self.normalizers)

    def refusal(self, normalizer: str, device: str, dtype: torch.dtype, needs: frozenset[str],
                forced: bool = False) -> Optional[str]:
        """Why this kernel cannot compute ``normalizer`` for such inputs, or None if it can (``forced``: the kernel
        was asked for by name)."""
        return self.unavailable() or self.input_refusal(normalizer, device, dtype, needs, forced)

    def input_refusal(self, normalizer: str, device: str, dtype: torch.dtype, needs: frozenset[str],
                      forced: bool = False) -> Optional[str]:
        """Why this kernel does not take such inputs (whether or not it is available here), or None."""
        if not self.implements(normalizer):
            return f"does not implement {normalizer}"
        if device not in self.devices and not (forced and device in self.forced_devices):
            return f"runs on {'/'.join(sorted(self.devices))}, not {device}" + (
                f" (on {'/'.join(sorted(self.forced_devices))} only when forced)" if self.forced_devices else "")
        if dtype not in self.dtypes:
            return f"takes {', '.join(sorted(str(d).replace('torch.', '') for d in self.dtypes))}, not " + \
                str(dtype).replace("torch.", "")
        missing = needs - self.features
        return f"lacks {', '.join(sorted(missing))}" if missing else None


_KERNELS: dict[str, Kernel] = {}
_REFERENCES: dict[str, Callable] = {}  # normalizer -> its plain PyTorch function (scores, mask, alpha) -> weights
_CHOICES: dict[tuple, Kernel] = {}  # (normalizer, device, dtype, needs, forced) -> kernel
_WARNED: set[str] = set()  # kernels whose unavailability was reported


def register_kernel(kernel: Kernel) -> Kernel:
    """Add ``kernel``; raises ValueError on a duplicate or reserved name, or an unknown feature."""
    if kernel.name in _KERNELS or kernel.name == AUTO:
        raise ValueError(f"kernel {kernel.name!r} is already registered or reserved (registered: "
                         f"{', '.join(kernel_names())})")
    unknown = sorted(kernel.features - set(FEATURES))
    if unknown:
        raise ValueError(f"kernel {kernel.name!r} declares unknown features {unknown}; known: {FEATURES}")
    _KERNELS[kernel.name] = kernel
    _CHOICES.clear()
    return kernel


def register_reference(normalizer: str, fn: Callable) -> None:
    """Give ``normalizer`` its reference function ``fn(scores, mask, alpha) -> weights`` (the normalizer registry
    does this for every normalizer it registers)."""
    if normalizer in _REFERENCES:
        raise ValueError(f"normalizer {normalizer!r} already has a reference function")
    _REFERENCES[normalizer] = fn
    _CHOICES.clear()


def reference_function(normalizer: str) -> Callable:
    return _REFERENCES[normalizer]


def warn_unavailable(name: str, reason: str, what: str) -> None:
    """Warn, once per kernel and process, that kernel ``name`` cannot run here and a slower one computes ``what``."""
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"sparse_attn_fairseq: the {name} kernel cannot run here: {reason}. A slower kernel computes "
                      f"{what} instead.", RuntimeWarning, stacklevel=4)


def forget_choices() -> None:
    """Drop the cached choices (a kernel's availability changed)."""
    _CHOICES.clear()


def kernel_names() -> tuple[str, ...]:
    """Registered kernels, the preferred first (the reference last)."""
    return tuple(k.name for k in sorted(_KERNELS.values(), key=lambda k: (-k.priority, k.name)))


def get_kernel(name: str) -> Kernel:
    if name not in _KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose {AUTO} or one of: {', '.join(kernel_names())}")
    return _KERNELS[name]


def kernels_for(normalizer: str) -> tuple[Kernel, ...]:
    """The kernels implementing ``normalizer``, preferred first (whether or not available here)."""
    return tuple(_KERNELS[n] for n in kernel_names() if _KERNELS[n].implements(normalizer))


def forced_kernel(requested: str = AUTO) -> str:
    """The kernel the environment forces, else ``requested`` (``auto``: let the registry choose)."""
    return os.environ.get(FORCE_ENV) or requested or AUTO


def select_kernel(normalizer: str, scores: torch.Tensor, needs: frozenset[str] = frozenset(),
                  requested: str = AUTO) -> Kernel:
    """The kernel that computes ``normalizer`` for these scores: the forced one, or the preferred one that accepts
    them. Cached per (normalizer, device, dtype, needs, forced).

    Raises:
        NoKernelError: the forced kernel refuses, or none accepts; the message lists each kernel's reason.
    """
    forced = forced_kernel(requested)
    key = (normalizer, scores.device.type, scores.dtype, needs, forced)
    kernel = _CHOICES.get(key)
    if kernel is None:
        kernel = _CHOICES[key] = _choose(normalizer, scores.device.type, scores.dtype, needs, forced)
    return kernel


def _choose(normalizer: str, device: str, dtype: torch.dtype, needs: frozenset[str], forced: str) -> Kernel:
    if forced != AUTO and not get_kernel(forced).implements(normalizer):
        forced = AUTO  # a forced kernel applies to the normalizers it implements; the others choose as usual
    candidates = (get_kernel(forced),) if forced != AUTO else tuple(_KERNELS[n] for n in kernel_names())
    reasons = []
    for kernel in candidates:
        reason = kernel.refusal(normalizer, device, dtype, needs, forced != AUTO)
        if reason is None:
            return kernel
        if kernel.input_refusal(normalizer, device, dtype, needs) is None and kernel.warns_when_unavailable \
                and forced == AUTO:
            warn_unavailable(kernel.name, reason, f"{normalizer} on {device}")
        reasons.append(f"{kernel.name}: {reason}")
    source = f" (forced by {FORCE_ENV})" if os.environ.get(FORCE_ENV) else " (forced)" if forced != AUTO else ""
    raise NoKernelError(f"no kernel computes {normalizer} for {device} {str(dtype).replace('torch.', '')} inputs"
                        + (f" needing {', '.join(sorted(needs))}" if needs else "") + f"{source}: "
                        + "; ".join(reasons))


def normalize(normalizer: str, scores: torch.Tensor, mask: Optional[torch.Tensor] = None, alpha=None,
              requested: str = AUTO) -> torch.Tensor:
    """Weights of ``normalizer`` over the last dim of ``scores``, computed by the kernel :func:`select_kernel`
    chooses (``alpha``: None, a float, or a per-row tensor; see :class:`Kernel`)."""
    needs = frozenset((ALPHA_GRAD,)) if isinstance(alpha, torch.Tensor) and alpha.requires_grad and \
        torch.is_grad_enabled() else frozenset()
    return select_kernel(normalizer, scores, needs, requested).fn(normalizer, scores, mask, alpha)
