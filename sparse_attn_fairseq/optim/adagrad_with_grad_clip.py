"""``--optimizer adagrad_with_grad_clip``: the adaptive-span paper's optimiser (Sukhbaatar et al., ACL 2019).

Adagrad whose step on each parameter tensor is scaled down when that tensor's gradient norm exceeds ``--adagrad-clip``:
lr_p = lr * min(1, clip / (||g_p|| + 1e-10)); the squared-gradient sums use the unclipped gradient, as in the
authors' code. fairseq's own port (examples/adaptive_span) reads each norm with ``.item()`` and calls ``Tensor.add_``
with the removed (scalar, tensor) signature; here the scale stays on the device and the update is torch 2 API.
"""

# No `from __future__ import annotations`: omegaconf reads the config field types at runtime.

from dataclasses import dataclass, field
from typing import List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II


class AdagradWithGradClip(torch.optim.Optimizer):
    """Adagrad with per-parameter gradient-norm clipping of the step (see the module docstring).

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        weight_decay: L2 penalty added to the gradient.
        grad_clip: largest gradient norm per parameter tensor taken at full step; 0 disables clipping.
        eps: added to the root of the squared-gradient sums.
    """

    def __init__(self, params, lr: float = 1e-2, weight_decay: float = 0.0, grad_clip: float = 0.0, eps: float = 1e-10):
        problems = [f"{name}={value!r} must be >= 0" for name, value in
                    (("lr", lr), ("weight_decay", weight_decay), ("grad_clip", grad_clip)) if not value >= 0]
        if problems:
            raise ValueError("AdagradWithGradClip: " + "; ".join(problems))
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, grad_clip=grad_clip, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("adagrad_with_grad_clip does not support sparse gradients")
                self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict) -> None:
        grad = param.grad
        if group["weight_decay"]:
            grad = grad.add(param, alpha=group["weight_decay"])
        state = self.state[param]
        if not state:
            state["sum"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["sum"].addcmul_(grad, grad)
        step = grad / state["sum"].sqrt().add_(group["eps"])
        if group["grad_clip"] > 0:  # scale the step of a tensor whose gradient norm exceeds the clip
            norm = torch.linalg.vector_norm(grad, dtype=torch.promote_types(grad.dtype, torch.float32))
            step = step * (group["grad_clip"] / (norm + 1e-10)).clamp(max=1.0).to(step.dtype)
        param.add_(step, alpha=-group["lr"])


@dataclass
class AdagradWithGradClipConfig(FairseqDataclass):
    adagrad_clip: float = field(default=0.0, metadata={"help": "largest gradient norm per parameter tensor taken at "
                                                               "a full step (0: no clipping; the paper: 0.03)"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    lr: List[float] = II("optimization.lr")


@register_optimizer("adagrad_with_grad_clip", dataclass=AdagradWithGradClipConfig)
class FairseqAdagradWithGradClip(FairseqOptimizer):
    """fairseq's wrapper of :class:`AdagradWithGradClip`."""

    def __init__(self, cfg: AdagradWithGradClipConfig, params):
        super().__init__(cfg)
        problems = [f"--{name.replace('_', '-')}={value!r}: must be >= 0"
                    for name, value in (("adagrad_clip", cfg.adagrad_clip), ("weight_decay", cfg.weight_decay))
                    if not value >= 0]
        if problems:
            raise ValueError("; ".join(problems))
        self._optimizer = AdagradWithGradClip(params, **self.optimizer_config)

    @property
    def optimizer_config(self):
        """Overrides of the saved optimizer state when resuming (fairseq's convention)."""
        return {"lr": self.cfg.lr[0], "weight_decay": self.cfg.weight_decay, "grad_clip": self.cfg.adagrad_clip}

    @property
    def supports_flat_params(self):
        return False  # the clip is per parameter tensor: a flat fp16 buffer would clip them all together
