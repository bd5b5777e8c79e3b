"""Kernels: the implementations behind each normalizer, chosen per input from a registry (registry.py).

Registered here: ``reference`` (plain PyTorch, everything), ``fused_cpu`` (the compiled entmax family on CPU) and
``triton`` (the entmax family on CUDA).
"""

from sparse_attn_fairseq.kernels import fused_cpu, reference, triton_entmax  # noqa: F401  (registrations)
from sparse_attn_fairseq.kernels.registry import (  # noqa: F401
    AUTO, FORCE_ENV, REFERENCE, Kernel, NoKernelError, get_kernel, kernel_names, kernels_for, normalize,
    register_kernel, register_reference, select_kernel,
)
