"""functional/, kernels/ and layers/ are pure torch: no file there may import fairseq (STYLE.md, imports point one
way)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sparse_attn_fairseq"


def _imported_modules(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_pure_layers_never_import_fairseq():
    files = [p for sub in ("functional", "kernels", "layers") for p in sorted((PACKAGE / sub).rglob("*.py"))]
    assert files, "no files found under functional/, kernels/ or layers/"
    offenders = [
        f"{p.relative_to(PACKAGE)} imports {m}"
        for p in files
        for m in _imported_modules(p)
        if m == "fairseq" or m.startswith("fairseq.") or m.startswith("sparse_attn_fairseq.modules")
        or m.startswith("sparse_attn_fairseq.models")
    ]
    assert not offenders, offenders
