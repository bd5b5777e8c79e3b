"""Task registrations. Importing this package registers them."""

from sparse_attn_fairseq.tasks import truncated_bptt_lm  # noqa: F401
