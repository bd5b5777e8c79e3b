"""Model registrations: one module per method. Importing this package registers them all."""

from sparse_attn_fairseq.models import (
    adaptive_span_example, transformer_adaptive_span, transformer_entmax, transformer_rela,
)

# Architectures this package registers with fairseq (checked by the --user-dir tests).
ARCHITECTURES: tuple = (
    *transformer_entmax.ARCHITECTURES,
    *transformer_rela.ARCHITECTURES,
    *transformer_adaptive_span.ARCHITECTURES,
    "adaptive_span",
)
