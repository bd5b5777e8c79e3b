"""Fix: fairseq 0.12.2's encoder layer switches to torch's fused "BetterTransformer" kernel in eval
mode after any state-dict load (``load_to_BT``): with padding it fails ("Mask Type should be
defined"), without padding it silently bypasses a custom self-attention module. Its 8 copies of the
layer's weights (in_proj_weight ... fc2_bias) are parameters that never get a gradient, which breaks
``--ddp-backend pytorch_ddp``. Affects torch >= 1.12. Switch: SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE=
bettertransformer.

The fast path is turned off per layer; the copies stay in the state dict (checkpoints are unchanged)
but no longer require gradients.
"""

import sys

_BT_PARAMETERS = (
    "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias",
    "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias",
)


def disable_fast_path(layer) -> None:
    """Make ``layer`` always take fairseq's own Python path."""
    layer.can_use_fastpath = False
    layer.BT_version = False
    for name in _BT_PARAMETERS:
        parameter = getattr(layer, name, None)
        if parameter is not None:
            parameter.requires_grad_(False)


def install(module_name: str) -> None:
    """Wrap TransformerEncoderLayerBase.__init__ so every encoder layer has the fast path off."""
    layer_class = sys.modules[module_name].TransformerEncoderLayerBase
    original_init = layer_class.__init__
    if getattr(original_init, "_sparse_attn_compat", False):
        return

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        disable_fast_path(self)

    __init__._sparse_attn_compat = True
    layer_class.__init__ = __init__
