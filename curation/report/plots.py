"""Plot and table helpers shared by the run report's sections.

Every figure becomes an ``<img>`` whose ``src`` is a ``data:`` URI, so ``report.html`` is one
self-contained file (no external CSS, JS, fonts or images) that can be mailed, attached to a
Prefect run or opened from an object store. Matplotlib runs headless (Agg) and is imported
lazily, so modules that only need the tables (the CLI) do not pay for it.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any

BLUE, RED, GREY, GREEN = "#2e86c1", "#c0392b", "#5d6d7e", "#27ae60"


def plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", bbox_inches="tight")  # legends placed outside the axes are kept
    plt().close(fig)
    return buf.getvalue()


def img(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG inline; ``alt`` names the figure for screen readers and tests."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def fig_img(fig: Any, alt: str) -> str:
    return img(png_bytes(fig), alt)


def table(header: list[str], rows: list[list[Any]], *, cls: str = "") -> str:
    """An escaped HTML table; wide tables scroll inside their box instead of widening the page."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    attr = f' class="{html.escape(cls)}"' if cls else ""
    return f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def histogram_grid(panels: list[tuple[str, dict[str, Any]]], alt: str, cols: int = 3) -> str:
    """Small histograms, one per (title, histogram) with the histogram as
    ``curation.report.filters.histogram`` makes it; a ``cut`` is drawn as a red dashed line."""
    if not panels:
        return ""
    pyplot = plt()
    from matplotlib.ticker import MaxNLocator

    cols = min(cols, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = pyplot.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), dpi=110, squeeze=False)
    for ax, (title, h) in zip(axes.flat, panels):
        edges, counts = h["edges"], h["counts"]
        ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge", color=GREY)
        if h.get("cut") is not None:
            ax.axvline(h["cut"], color=RED, linestyle="--", linewidth=1)
        ax.set_title(f"{title} (n={h.get('n', sum(counts)):,})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(5))
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return fig_img(fig, alt)


@dataclass(frozen=True)
class Section:
    """One part of the report: ``anchor`` is its id for the table of contents."""

    anchor: str
    title: str
    body: str

    def html(self) -> str:
        return f'<section id="{html.escape(self.anchor)}"><h2>{html.escape(self.title)}</h2>{self.body}</section>'
