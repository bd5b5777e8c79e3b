"""Optimizer registrations. Importing this package registers them."""

from sparse_attn_fairseq.optim import adagrad_with_grad_clip  # noqa: F401
