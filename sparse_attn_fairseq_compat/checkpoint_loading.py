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


def _trusted() -> bool:
    return os.environ.get(TRUST_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def _describe(f) -> str:
    return repr(os.fspath(f)) if isinstance(f, (str, os.PathLike)) else "an in-memory checkpoint"


def load(f, *args, **kwargs):
    """torch.load; for fairseq callers, the allowlisted restricted unpickler with clear errors."""
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if "weights_only" in kwargs or not caller.startswith(_FAIRSEQ_CALLERS):
        return _original_load(f, *args, **kwargs)
    if _trusted():
        return _original_load(f, *args, weights_only=False, **kwargs)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return _original_load(f, *args, weights_only=True, **kwargs)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"refusing to load {_describe(f)}: it contains a global that fairseq checkpoints do not "
            f"(torch says: {str(error).splitlines()[0] if str(error) else error!r}). Loading it would "
            f"run code from the file. If you trust it, set {TRUST_VARIABLE}=1."
        ) from error
    except (RuntimeError, EOFError) as error:
        if "zip archive" in str(error) or isinstance(error, EOFError) or "Ran out of input" in str(error):
            raise CorruptCheckpointError(
                f"cannot read checkpoint {_describe(f)}: the file is truncated or not a torch "
                f"checkpoint ({error})"
            ) from error
        raise


def install(_trigger: str = "") -> None:
    """Route torch.load through ``load`` (idempotent)."""
    if torch.load is not load:
        torch.load = load
