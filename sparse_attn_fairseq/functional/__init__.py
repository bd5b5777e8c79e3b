"""Pure tensor math for sparse attention (torch only; never imports fairseq)."""
