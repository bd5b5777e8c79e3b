"""Sparse and adaptive attention for fairseq, loaded with ``--user-dir``.

Importing this package registers its models and architectures with fairseq.
"""

from sparse_attn_fairseq import models  # noqa: F401  (registers architectures)

__version__ = "0.1.0"
