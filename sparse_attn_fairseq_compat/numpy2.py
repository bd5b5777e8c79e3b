"""Fix: numpy 2 removed ``np.compat`` and ``np.percentile(interpolation=)``, which fairseq 0.12.2's
token_block_dataset (LM ``--sample-break-mode eos``), language_pair_dataset (``--num-batch-buckets``)
and data_utils.get_buckets call. Affects numpy >= 2.0. Switch: SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE=
numpy2_token_block,numpy2_language_pair,numpy2_data_utils.

The affected modules get their own ``np`` that forwards everything to numpy except those two names.
"""

import sys
import types

import numpy


class _Numpy2Shim(types.ModuleType):
    """numpy, plus the two pre-2.0 spellings fairseq uses."""

    compat = types.SimpleNamespace(long=numpy.int64)

    def __getattr__(self, name):
        return getattr(numpy, name)

    @staticmethod
    def percentile(a, q, *args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs.setdefault("method", interpolation)
        return numpy.percentile(a, q, *args, **kwargs)


def install(module_name: str) -> None:
    """Give ``module_name`` the shim as its ``np`` (only when numpy really lacks the old names)."""
    if hasattr(numpy, "compat"):
        return
    module = sys.modules[module_name]
    module.np = _Numpy2Shim("numpy")
