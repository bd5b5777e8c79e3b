"""Criterion registrations. Importing this package registers them."""

from sparse_attn_fairseq.criterions import adaptive_span_loss  # noqa: F401
