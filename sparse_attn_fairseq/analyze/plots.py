"""Plots of an analysis (matplotlib, optional): what a person looks at rather than reads.

Each function takes the reports of analysis.json and writes one PNG; :func:`write_plots` writes every one that applies
and returns their paths. Without matplotlib nothing is drawn and the caller says how to get it.
"""

from __future__ import annotations

from pathlib import Path

TYPE_LABELS = {"encoder": "encoder self", "decoder": "decoder self", "encoder_decoder": "cross"}


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _name(report: dict) -> str:
    folder = Path(report["path"]).parent.name
    return report["arch"] if folder == report["arch"] else f"{folder} ({report['arch']})"


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def head_parameter_heatmap(reports: list[dict], key: str, out: Path, label: str, vmin=None, vmax=None) -> Path | None:
    """One heatmap (layer x head) per model and attention type of a learned per-head parameter (alpha, span)."""
    panels = [(r, t, layers) for r in reports for t, layers in r["attention"].items()
              if layers and key in layers[0]["heads"][0]]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1, 3.2), squeeze=False)
    for ax, (report, attention_type, layers) in zip(axes[0], panels):
        grid = [[head[key] for head in layer["heads"]] for layer in layers]
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}" if key == "alpha" else f"{value:.0f}", ha="center", va="center",
                        color="white", fontsize=8)
        ax.set_title(f"{_name(report)}\n{TYPE_LABELS[attention_type]}", fontsize=9)
        ax.set_xticks(range(len(grid[0])))
        ax.set_yticks(range(len(grid)))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(image, ax=ax, label=label)
    return _save(plt, fig, out)


def per_layer_lines(reports: list[dict], out: Path) -> Path:
    """Zero fraction and JS head diversity per layer, one line per model, one column per attention type."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    types = [t for t in TYPE_LABELS if any(t in r["attention"] for r in reports)]
    fig, axes = plt.subplots(2, len(types), figsize=(4.2 * len(types), 6), squeeze=False)
    for column, attention_type in enumerate(types):
        for report in reports:
            layers = report["attention"].get(attention_type, [])
            index = [layer["layer"] for layer in layers]
            axes[0][column].plot(index, [layer["zero_fraction"] for layer in layers], marker="o", label=_name(report))
            axes[1][column].plot(index, [layer["js"] if layer["js"] is not None else float("nan") for layer in layers],
                                 marker="o", label=_name(report))
        axes[0][column].set_title(TYPE_LABELS[attention_type])
        axes[0][column].set_ylabel("exact zeros (fraction of unmasked)")
        axes[1][column].set_ylabel("head diversity (JS)")
        for row in (0, 1):
            axes[row][column].xaxis.set_major_locator(MaxNLocator(integer=True))
            axes[row][column].set_xlabel("layer")
            axes[row][column].set_ylim(0, 1)
            axes[row][column].grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, out)


def aer_lines(reports: list[dict], out: Path) -> Path | None:
    """Cross-attention AER per layer: best head solid, head average dashed; normal and shifted side by side."""
    with_aer = [r for r in reports if "aer" in r]
    if not with_aer:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), squeeze=False)
    for ax, mode in zip(axes[0], ("normal", "shifted")):
        for index, report in enumerate(with_aer):
            rows = report["aer"][mode]
            layers = [row["layer"] for row in rows]
            color = f"C{index}"
            ax.plot(layers, [row["best_head_aer"] for row in rows], marker="o", color=color, label=_name(report))
            ax.plot(layers, [row["head_average"] for row in rows], linestyle="--", color=color)
        ax.set_title(f"cross-attention AER, {mode} (solid: best head, dashed: head average)", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("AER (lower is better)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, out)


def attention_maps(maps: list[dict], out: Path) -> Path | None:
    """All heads of one layer for one sentence, exact zeros in their own colour (light grey).

    maps: [{"title": str, "weights": (H, T, S) nested lists, "source": [str], "target": [str]}]."""
    if not maps:
        return None
    plt = _pyplot()
    import numpy as np

    heads = max(len(m["weights"]) for m in maps)
    fig, axes = plt.subplots(len(maps), heads, figsize=(2.6 * heads + 1, 2.6 * len(maps) + 0.5), squeeze=False)
    cmap = plt.get_cmap("Blues").copy()
    cmap.set_bad("#e8e8e8")  # exact zeros
    for row, m in enumerate(maps):
        for h in range(heads):
            ax = axes[row][h]
            if h >= len(m["weights"]):
                ax.axis("off")
                continue
            w = np.asarray(m["weights"][h], dtype=float)
            ax.imshow(np.ma.masked_equal(w, 0.0), cmap=cmap, vmin=0, vmax=max(w.max(), 1e-9), aspect="auto")
            ax.set_xticks(range(len(m["source"])), m["source"], rotation=90, fontsize=6)
            ax.set_yticks(range(len(m["target"])), m["target"], fontsize=6)
            ax.set_title(f"{m['title']}, head {h}" if h == 0 else f"head {h}", fontsize=8)
    return _save(plt, fig, out)


def write_plots(reports: list[dict], out_dir: Path, maps: list[dict]) -> list[Path]:
    """Every plot that applies to these reports; an empty list without matplotlib."""
    if not matplotlib_available():
        return []
    drawn = [
        head_parameter_heatmap(reports, "alpha", out_dir / "alpha.png", "alpha", vmin=1.0, vmax=2.0),
        head_parameter_heatmap(reports, "span", out_dir / "spans.png", "span (tokens)"),
        per_layer_lines(reports, out_dir / "sparsity_js.png"),
        aer_lines(reports, out_dir / "aer.png"),
        attention_maps(maps, out_dir / "attention_maps.png"),
    ]
    return [path for path in drawn if path is not None]
