"""Runtime compatibility fixes for fairseq 0.12.2 on Python 3.11+, torch 2.6+ and numpy 2.

Loaded at interpreter start-up by ``sparse_attn_fairseq_compat.pth``: it only registers an import
hook, and each fix runs when the module it fixes is imported (nothing happens in processes that
never import fairseq or hydra). fairseq and hydra stay untouched on disk.

Switches (environment variables):
  SPARSE_ATTN_FAIRSEQ_COMPAT=0            turn every fix off
  SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE=a,b  turn off the named fixes (see ``FIXES``)
  SPARSE_ATTN_FAIRSEQ_TRUST_CHECKPOINTS=1 load fairseq checkpoints with full pickle (trusted files only)

This package must never import ``sparse_attn_fairseq``: fairseq's --user-dir loader skips or rejects
a package that is already imported.
"""

from sparse_attn_fairseq_compat.hook import FIXES, enabled_fixes, install

__all__ = ["FIXES", "enabled_fixes", "install"]
