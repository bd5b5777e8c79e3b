"""Fix: Python 3.11+ rejects dataclass instances as field defaults ("mutable default ... use
default_factory"), which fairseq 0.12.2 configs and hydra-core 1.0.7 use everywhere, so
``import fairseq`` fails. Affects Python >= 3.11. Switch: SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE=
dataclass_defaults.

Only classes defined in fairseq/hydra modules are exempted, and their ``Field.default`` keeps the
instance itself (hydra's structured configs read it; converting to default_factory breaks hydra),
which is exactly the Python <= 3.10 behaviour those packages were written for.
"""

import dataclasses
import sys

_EXEMPT_PREFIXES = ("fairseq", "fairseq_cli", "hydra")
_original_get_field = dataclasses._get_field


class _HashablePlaceholder:
    """Stands in for an unhashable default while dataclasses runs its mutability check."""


def _is_unhashable_instance(value) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type) and type(value).__hash__ is None


def _exempt(cls) -> bool:
    return cls.__module__.split(".")[0] in _EXEMPT_PREFIXES


def _get_field(cls, a_name, a_type, *args):
    default = cls.__dict__.get(a_name, dataclasses.MISSING)
    holder = default if isinstance(default, dataclasses.Field) else None
    value = holder.default if holder is not None else default
    if not (_exempt(cls) and _is_unhashable_instance(value)):
        return _original_get_field(cls, a_name, a_type, *args)
    if holder is not None:
        holder.default = _HashablePlaceholder()
    else:
        setattr(cls, a_name, _HashablePlaceholder())
    try:
        field = _original_get_field(cls, a_name, a_type, *args)
    finally:
        if holder is None:
            setattr(cls, a_name, value)
    field.default = value
    return field


def install(_trigger: str = "") -> None:
    """Route dataclasses' field construction through the exemption (idempotent)."""
    if sys.version_info >= (3, 11) and dataclasses._get_field is not _get_field:
        dataclasses._get_field = _get_field
