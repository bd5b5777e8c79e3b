"""Fix: torch >= 2.6 loads with ``weights_only=True`` by default, and fairseq 0.12.2 checkpoints hold
argparse.Namespace and omegaconf objects, so every fairseq ``torch.load`` fails (checkpoint_utils,
and the distributed object broadcast on ranks > 0): resume, generate, interactive, validate,
eval-lm and the hub. Switch: SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE=checkpoint_loading.

We do not fall back to full pickle, which runs code from the file. Calls made from fairseq's own
code load with torch's restricted unpickler plus an allowlist of exactly the classes fairseq
checkpoints contain; any other global is refused with an error naming it. A trusted legacy file that
needs more can be loaded with SPARSE_ATTN_FAIRSEQ_TRUST_CHECKPOINTS=1. Calls from other code are
passed through unchanged.
"""

import argparse
import os
import pickle
import sys

import torch

TRUST_VARIABLE = "SPARSE_ATTN_FAIRSEQ_TRUST_CHECKPOINTS"
_FAIRSEQ_CALLERS = ("fairseq.", "fairseq_cli.")
# fairseq broadcasts a loaded checkpoint from rank 0 to the others on a distributed resume: the payload also holds
# fairseq's tensor placeholders and the builtin types that omegaconf's node metadata names.
_BROADCAST_CALLERS = ("fairseq.distributed.utils",)
_original_load = torch.load


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint contains a global outside the fairseq allowlist, so it was not loaded."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file could not be read (truncated, not a torch file, ...)."""


def allowed_globals() -> list:
    """The classes and functions fairseq checkpoints contain beyond torch's own tensors."""
    import collections
    import typing

    from omegaconf import base, dictconfig, listconfig, nodes

    return [
        argparse.Namespace, collections.defaultdict, typing.Any,
        dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata, base.Metadata,
        nodes.AnyNode, nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode,
        nodes.EnumNode,
    ]


def broadcast_globals() -> list:
    """What fairseq's object broadcast adds to a checkpoint's globals (still no callable that runs code)."""
    from fairseq.distributed.utils import _TensorPlaceholder

    return [dict, list, tuple, set, str, int, float, bool, _TensorPlaceholder]


def _trusted() -> bool:
    return os.environ.get(TRUST_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def _describe(f) -> str:
    if isinstance(f, (str, os.PathLike)):
        return repr(os.fspath(f))
    name = getattr(f, "name", None)  # fairseq opens the file itself
    return repr(name) if isinstance(name, str) else "an in-memory checkpoint"


def _offending_global(error: Exception) -> str:
    """The line of torch's message that names the refused global (it is not the first line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or [repr(error)])[0]


def load(f, *args, **kwargs):
    """torch.load; for fairseq callers, the allowlisted restricted unpickler with clear errors."""
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if "weights_only" in kwargs or not caller.startswith(_FAIRSEQ_CALLERS):
        return _original_load(f, *args, **kwargs)
    if _trusted():
        return _original_load(f, *args, weights_only=False, **kwargs)
    allowed = allowed_globals() + (broadcast_globals() if caller.startswith(_BROADCAST_CALLERS) else [])
    try:
        with torch.serialization.safe_globals(allowed):
            return _original_load(f, *args, weights_only=True, **kwargs)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise _explain(error, f) from error


def _explain(error: Exception, f) -> Exception:
    """Turn torch's load failure into an error that says what is wrong with which file."""
    offending = _offending_global(error)
    if isinstance(error, pickle.UnpicklingError) and "GLOBAL" in offending:
        return UnsafeCheckpointError(
            f"refusing to load {_describe(f)}: it contains a global that fairseq checkpoints do not "
            f"({offending}). Loading it could run code from the file. If you trust it, set "
            f"{TRUST_VARIABLE}=1."
        )
    unreadable = isinstance(error, (pickle.UnpicklingError, EOFError)) or (
        isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError))
    ) or "PytorchStreamReader" in str(error) or "zip archive" in str(error)
    if not unreadable:
        return error
    return CorruptCheckpointError(
        f"cannot read checkpoint {_describe(f)}: the file is truncated, corrupt or not a fairseq "
        f"checkpoint ({offending})"
    )


def install(_trigger: str = "") -> None:
    """Route torch.load through ``load`` (idempotent)."""
    if torch.load is not load:
        torch.load = load
