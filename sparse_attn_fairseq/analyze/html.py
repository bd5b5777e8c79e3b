"""report.html: one self-contained page (tables and every plot embedded as data URIs) that opens offline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

DEFINITIONS = [
    ("zeros", "exact zeros among the weights of unmasked keys, real queries only"),
    ("support", "keys with a nonzero weight per query (Correia et al. 2019: density); relative: over unmasked keys"),
    ("null rows", "queries whose weights are all zero: the head attends to nothing (ReLA, Zhang et al. 2021)"),
    ("JS", "head diversity: mean over queries of H(mean_h p_h) - mean_h H(p_h), entropies in log base n_keys "
           "(Correia et al. 2019), 0 = identical heads, 1 = disjoint"),
    ("alpha", "learned entmax alpha: 1 softmax, 2 sparsemax"),
    ("span", "learned adaptive span in tokens (Sukhbaatar et al. 2019)"),
    ("AER", "alignment error rate, 1 - (|A n S| + |A n P|) / (|A| + |S|) (Och & Ney 2003); each target word links to "
            "the source word its attention favours; normal: the step predicting the word, shifted: the next step"),
]


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>")


def markdown_table_rows(markdown: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first markdown table in ``markdown``."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return split[0], [row for row in split[2:]]


def write_html(out: Path, report_md: str, plots: list[Path], note: str = "") -> Path:
    """Write report.html: the per-layer table of report.md, the definitions, and every plot."""
    header, rows = markdown_table_rows(report_md)
    definitions = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS)
    figures = "".join(_image(p) for p in plots) or f"<p>{html.escape(note)}</p>"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sparse-attn-analyze report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f0f0f0; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }} dt {{ font-weight: bold; }}
</style></head><body>
<h1>What every head learned</h1>
<h2>Per attention type and layer (means over heads)</h2>
{_table(header, rows)}
<h2>Definitions</h2><dl>{definitions}</dl>
<h2>Plots</h2>{figures}
</body></html>
"""
    out.write_text(page, encoding="utf-8")
    return out
