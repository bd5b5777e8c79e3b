"""Kernels: the implementations behind each normalizer, chosen per input from a registry (registry.py).

Registered here: ``reference`` (plain PyTorch, everything) and ``fused_cpu`` (the compiled entmax family).
"""

from sparse_attn_fairseq.kernels import fused_cpu, reference  # noqa: F401  (registrations)
from sparse_attn_fairseq.kernels.registry import (  # noqa: F401
    AUTO, FORCE_ENV, REFERENCE, Kernel, NoKernelError, get_kernel, kernel_names, kernels_for, normalize,
    register_kernel, register_reference, select_kernel,
)
