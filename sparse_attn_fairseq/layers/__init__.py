"""torch modules that own the parameters of the normalizers, output norms and adaptive span (never import fairseq)."""
