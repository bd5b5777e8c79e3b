"""fairseq-facing modules: the one sparse attention module, layer subclasses and training-time logging."""
