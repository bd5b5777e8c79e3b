"""Fix: fairseq 0.12.2 builds torch's DistributedDataParallel with ``device_ids=[device_id]`` whatever the device,
so ``--ddp-backend pytorch_ddp`` (the default) fails on CPU ("device_ids ... only work with ... GPU modules").
Switch: SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE=cpu_ddp.

fairseq's wrapper gets a DistributedDataParallel that leaves out device_ids and output_device for a module whose
parameters are all on the CPU, as torch requires; CUDA modules are wrapped exactly as before.
"""

import sys

import torch


class CpuAwareDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """torch's DistributedDataParallel, without device ids for a CPU module."""

    def __init__(self, module, device_ids=None, output_device=None, **kwargs):
        if all(p.device.type == "cpu" for p in module.parameters()):
            device_ids = output_device = None
        super().__init__(module, device_ids=device_ids, output_device=output_device, **kwargs)


def install(module_name: str) -> None:
    """Make fairseq.models.distributed_fairseq_model build the CPU-aware class."""
    module = sys.modules[module_name]
    if module.DistributedDataParallel is not CpuAwareDistributedDataParallel:
        module.DistributedDataParallel = CpuAwareDistributedDataParallel
