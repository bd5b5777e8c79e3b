"""Fix: fairseq 0.12.2's argument parser turns ``--bf16`` into ``--tpu`` (``args.tpu = True`` whenever bf16 is set),
so bf16 training on CPU or CUDA fails looking for torch_xla ("'NoneType' object has no attribute 'xla_device'").
Switch: SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE=bf16_without_tpu.

After parsing, ``tpu`` is only left on when ``--tpu`` itself was given; bf16 then trains on the CPU or GPU through
fairseq's own bf16 path (model in bfloat16, float32 master weights in its FP16Optimizer).
"""

import sys


def _asked_for_tpu(input_args) -> bool:
    args = sys.argv[1:] if input_args is None else input_args
    return any(str(arg) == "--tpu" for arg in args)


def install(module_name: str) -> None:
    """Wrap fairseq.options.parse_args_and_arch."""
    options = sys.modules[module_name]
    original = options.parse_args_and_arch
    if getattr(original, "_sparse_attn_compat", False):
        return

    def parse_args_and_arch(parser, input_args=None, parse_known=False, suppress_defaults=False,
                            modify_parser=None):
        result = original(parser, input_args, parse_known, suppress_defaults, modify_parser)
        args = result[0] if isinstance(result, tuple) else result
        if getattr(args, "bf16", False) and getattr(args, "tpu", False) and not _asked_for_tpu(input_args):
            args.tpu = False
        return result

    parse_args_and_arch._sparse_attn_compat = True
    options.parse_args_and_arch = parse_args_and_arch
