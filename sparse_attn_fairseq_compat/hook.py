"""A meta-path finder that runs each compatibility fix when the module it fixes is imported."""

import importlib
import os
import sys

# Kept import-light (no typing, no importlib.abc/util): this module loads in every interpreter.

# fix name -> (module that triggers it, "before" or "after" its import, "module:function" to run)
FIXES: dict[str, tuple[str, str, str]] = {
    # On dataclasses itself, not fairseq/hydra: pytest's assertion rewriter imports hydra's
    # pytest plugin through its own finder, ahead of ours. The fix exempts fairseq/hydra only.
    "dataclass_defaults": ("dataclasses", "after", "dataclass_defaults:install"),
    "checkpoint_loading": ("fairseq", "after", "checkpoint_loading:install"),
    "bettertransformer": ("fairseq.modules.transformer_layer", "after", "bettertransformer:install"),
    "numpy2_token_block": ("fairseq.data.token_block_dataset", "after", "numpy2:install"),
    "numpy2_language_pair": ("fairseq.data.language_pair_dataset", "after", "numpy2:install"),
    "numpy2_data_utils": ("fairseq.data.data_utils", "after", "numpy2:install"),
    "cpu_ddp": ("fairseq.models.distributed_fairseq_model", "after", "cpu_ddp:install"),
    "bf16_without_tpu": ("fairseq.options", "after", "bf16_without_tpu:install"),
}


def enabled_fixes() -> list[str]:
    """Names of the fixes that the environment leaves switched on."""
    if os.environ.get("SPARSE_ATTN_FAIRSEQ_COMPAT", "1").strip().lower() in ("0", "false", "off", "no"):
        return []
    disabled = {n.strip() for n in os.environ.get("SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE", "").split(",")}
    unknown = disabled - set(FIXES) - {""}
    if unknown:
        raise ValueError(
            f"SPARSE_ATTN_FAIRSEQ_COMPAT_DISABLE names unknown fixes {sorted(unknown)}; "
            f"valid: {sorted(FIXES)}"
        )
    return [name for name in FIXES if name not in disabled]


def _resolve(target: str):
    module_name, function_name = target.split(":")
    module = importlib.import_module(f"sparse_attn_fairseq_compat.{module_name}")
    return getattr(module, function_name)


class _FixFinder:
    """A meta-path finder: runs "before" fixes on first import of a trigger module and wraps its
    loader to run "after" fixes once the module has executed."""

    def __init__(self, fixes: list[str]):
        self.pending: dict[str, list[tuple[str, str]]] = {}
        for name in fixes:
            module, when, target = FIXES[name]
            self.pending.setdefault(module, []).append((when, target))

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:
            return None
        fixes = self.pending.pop(fullname)
        for when, target_fn in fixes:
            if when == "before":
                _resolve(target_fn)(fullname)
        after = [t for w, t in fixes if w == "after"]
        if not after:
            return None
        spec = self._find_elsewhere(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _PatchingLoader(spec.loader, after)
        return spec

    def _find_elsewhere(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    return spec
        return None


class _PatchingLoader:
    """Delegates to the real loader, then runs the fixes on the freshly executed module."""

    def __init__(self, loader, targets: list[str]):
        self.loader, self.targets = loader, targets

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        for target in self.targets:
            _resolve(target)(module.__name__)

    def __getattr__(self, name):  # get_source, get_code, is_package ... for tracebacks and pkgutil
        return getattr(self.loader, name)


def install() -> None:
    """Register the import hook once. Called from the .pth file at interpreter start-up.

    Fixes whose module is already imported run at once.
    """
    if any(isinstance(f, _FixFinder) for f in sys.meta_path):
        return
    finder = _FixFinder(enabled_fixes())
    for module in [m for m in finder.pending if m in sys.modules]:
        for _when, target in finder.pending.pop(module):
            _resolve(target)(module)
    if finder.pending:
        sys.meta_path.insert(0, finder)
