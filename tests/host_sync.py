"""Finding device-to-host synchronisations without a GPU: run the code on the ``meta`` device under a dispatch mode
that stops every operation reading tensor data on the host.

On CUDA a sync is any operation whose result the host must wait for: ``.item()``, ``bool()``, ``int()``,
``float()``, ``.tolist()``, ``nonzero``, boolean indexing, ``torch.equal``, ``repeat_interleave`` with tensor
repeats, a copy to the CPU. All of them reach the dispatcher as one of the operations in :data:`HOST_READS` (or an
index with a bool tensor, or a copy to another device), so a dispatch mode sees them whichever Python spelling the
code used. On ``meta`` tensors (no data, any device other than the CPU for the code's device checks) such a read
cannot even be carried out; the mode records who asked, by the innermost frame outside torch, and answers with a
stand-in value so the run goes on:

* a frame of this package is a violation (the forward or backward of our code would wait for the GPU);
* any other frame (fairseq's own code, e.g. the encoder's ``if has_pads``) is recorded separately: stock fairseq
  pays those syncs with stock attention too.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sparse_attn_fairseq") + os.sep
TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
HOST_READS = {
    aten._local_scalar_dense.default: "a tensor read as a Python number (.item(), bool(), int(), float(), tolist())",
    aten.is_nonzero.default: "bool() of a tensor",
    aten.nonzero.default: "nonzero (an output size that depends on the data)",
    aten.masked_select.default: "masked_select",
    aten.equal.default: "torch.equal",
    aten.repeat_interleave.Tensor: "repeat_interleave with tensor repeats",
    aten._unique2.default: "unique",
    aten.unique_dim.default: "unique",
    aten.unique_consecutive.default: "unique_consecutive",
    aten.bincount.default: "bincount",
}


@dataclass
class HostRead:
    what: str
    where: str  # file:line of the innermost frame outside torch

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class HostSyncRecorder(TorchDispatchMode):
    """Records each host read of meta tensors; ``ours`` lists those asked for by this package's code. With
    ``all_devices``, reads of CPU tensors count too (for code that is the same on every device, run on the CPU:
    the Triton kernels' launcher under triton's interpreter); they are answered, not replaced."""

    all_devices: bool = False
    ours: List[HostRead] = field(default_factory=list)
    theirs: List[HostRead] = field(default_factory=list)

    # higher-order operators (flex_attention) pass through and run whole: what they do inside is torch's
    supports_higher_order_operators = True

    def __post_init__(self):
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = _host_read(func, args, kwargs, self.all_devices)
        if what is None:
            return func(*args, **kwargs)
        where = _caller()
        (self.ours if where.startswith(PACKAGE) else self.theirs).append(HostRead(what, where))
        if not any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args):
            return func(*args, **kwargs)  # real data: answer it
        return _stand_in(func, args, kwargs)


def _off_cpu(x, all_devices: bool) -> bool:
    """Whether reading ``x`` counts: it lives off the CPU (reading a CPU tensor is no synchronisation)."""
    return isinstance(x, torch.Tensor) and (all_devices or x.device.type != "cpu")


def _host_read(func, args, kwargs, all_devices: bool = False):
    if func in HOST_READS:
        return HOST_READS[func] if any(_off_cpu(a, all_devices) for a in args) else None
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(_off_cpu(i, all_devices) and i.dtype == torch.bool for i in indices if i is not None):
            return "indexing with a bool tensor (nonzero)"
    if func in (aten._to_copy.default, aten.copy_.default):
        source = args[1] if func is aten.copy_.default else args[0]
        target = args[0].device if func is aten.copy_.default else kwargs.get("device")
        if _off_cpu(source, False) and target is not None and torch.device(target) != source.device:
            return f"a copy from {source.device} to {target}"
    return None


def _caller() -> str:
    """file:line of the innermost frame that is not torch's own Python (nor this module)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(TORCH) and path != os.path.abspath(__file__):
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def _stand_in(func, args, kwargs):
    """A value of the right kind for a read that meta tensors cannot answer: True, 1 or 1.0 for a number (fairseq's
    ``if has_pads:`` then takes its padded branch, which is always correct), nothing selected for nonzero, zeros for a
    copy to the CPU."""
    if func is aten._local_scalar_dense.default:
        dtype = args[0].dtype
        return True if dtype == torch.bool else 1 if not dtype.is_floating_point else 1.0
    if func in (aten.is_nonzero.default, aten.equal.default):
        return True
    if func is aten.nonzero.default:  # no entry selected
        return torch.empty((0, args[0].ndim), dtype=torch.long, device=args[0].device)
    if func is aten._to_copy.default:  # zeros where the copy lands
        return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype, device=kwargs["device"])
    raise AssertionError(f"host read {func} has no stand-in: make the code avoid it")
