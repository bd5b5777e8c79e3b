"""Whether the host may read a tensor's values: on the CPU a read is free; on a GPU it waits for every operation
queued before it (a device-to-host synchronisation). Code on the training and decoding path asks
:func:`reads_are_free` before a data-dependent shortcut (a convergence test, a skipped mask, a cropped cache) and
takes a sync-free branch otherwise: fixed iteration counts, masks applied everywhere, bounds known on the host.
Both branches compute the same numbers; tests/host_sync.py checks that no read is left on the sync-free one.
"""

from __future__ import annotations

import torch

# Tests switch this on to run the sync-free branches on CPU tensors, where their numbers can be checked.
_SYNC_FREE_EVERYWHERE = False


def reads_are_free(x: torch.Tensor) -> bool:
    """True for CPU tensors (unless the sync-free branches are forced): their values can be read without waiting."""
    return x.device.type == "cpu" and not _SYNC_FREE_EVERYWHERE
