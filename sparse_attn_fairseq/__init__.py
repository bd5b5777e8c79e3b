"""Sparse and adaptive attention for fairseq, loaded with ``--user-dir``.

Importing this package registers its models and architectures, the streaming task ``truncated_bptt_lm`` and the
optimizer ``adagrad_with_grad_clip`` with fairseq.
"""

from sparse_attn_fairseq import criterions, models, optim, tasks  # noqa: F401  (registrations)

__version__ = "0.1.0"
