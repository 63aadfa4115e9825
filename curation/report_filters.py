"""The run report's filter section: the funnel per filter step, score histograms (margin,
voting strength, CHES) and the routing curve, drawn from the filter stage's summary."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

STEP_HEADER = ["step", "kind", "pairs in", "judged", "kept", "filtered", "flipped", "routed", "pairs out", "seconds", "top reasons"]
HISTOGRAM_SCORES = {"margin", "strength_mean", "ches", "ln_ches", "route_score", "similarity"}


def step_rows(fc: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for stage, s in fc["steps"].items():
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(s["reasons"].items(), key=lambda x: -x[1])[:3])
        rows.append(
            [
                stage,
                s["kind"],
                s["pairs_in"],
                s["judged"],
                s["kept"],
                s["filtered"],
                s["flipped"],
                s["routed"],
                s["pairs_out"],
                s["seconds"],
                reasons,
            ]
        )
    return rows


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def steps_png(fc: dict[str, Any]) -> str:
    """Pairs alive after each step (bars), with what each step removed, flipped and routed."""
    plt = _plt()
    steps = list(fc["steps"].items())
    names = ["into filters"] + [k for k, _ in steps]
    alive = [fc["pairs_in"]] + [s["pairs_out"] for _, s in steps]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(names)), dpi=110)
    ys = list(range(len(names)))[::-1]
    ax.barh(ys, alive, color="#2e86c1", label="alive after the step")
    removed = [0] + [s["filtered"] for _, s in steps]
    ax.barh(ys, removed, left=alive, color="#c0392b", label="filtered by the step")
    for y, a, (_, s) in zip(ys[1:], alive[1:], steps):
        note = ", ".join(f"{s[k]:,} {k}" for k in ("flipped", "routed") if s.get(k))
        if note:
            ax.text(a, y, f"  {note}", va="center", fontsize=7)
    ax.set_yticks(ys, names)
    ax.set_xlabel("pairs")
    ax.set_title("Filters in order: pairs alive and removed per step")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def histograms_png(fc: dict[str, Any]) -> str:
    """One small histogram per (step, score) the steps recorded (see ``histogram``)."""
    panels = []
    for stage, s in fc["steps"].items():
        for score, h in s["histograms"].items():
            panels.append((f"{stage}: {score}", h))
    if not panels:
        return ""
    plt = _plt()
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), dpi=110, squeeze=False)
    for ax, (title, h) in zip(axes.flat, panels):
        edges, counts = h["edges"], h["counts"]
        ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge", color="#5d6d7e")
        if h.get("cut") is not None:
            ax.axvline(h["cut"], color="#c0392b", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return _png(fig)


def routing_png(curve: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    for name, ys in curve["agreement"].items():
        ax.plot([100 * b for b in curve["budgets"]], [100 * y for y in ys], marker="." if name != "random" else None, label=name)
    ax.set_xlabel("human budget (% of pairs routed)")
    ax.set_ylabel("agreement with human labels (%)")
    ax.set_title(f"Routing on {curve['pairs']:,} human-labelled pairs")
    ax.legend(fontsize=7)
    return _png(fig)


def histogram(values: list[float], bins: int = 20, cut: float | None = None) -> dict[str, Any] | None:
    """A JSON-able histogram for the summary (the report has no access to the tables)."""
    import numpy as np

    xs = np.asarray([v for v in values if v is not None], dtype=float)
    xs = xs[np.isfinite(xs)]
    if xs.size < 2:
        return None
    counts, edges = np.histogram(xs, bins=bins)
    return {"counts": counts.tolist(), "edges": [float(e) for e in edges], "cut": cut, "n": int(xs.size)}


def filter_html(f: dict[str, Any]) -> str:
    if "filter" not in f:
        return ""
    fc = f["filter"]
    from curation.report import _table

    out = (
        "<h2>Filters</h2><p>Steps in the recipe's order; each sees the pairs the previous ones kept. Why a pair went: "
        '<code>curate sql "SELECT stage, decision, reason, count(*) FROM decisions GROUP BY ALL"</code>.</p>'
    )
    out += _table(STEP_HEADER, step_rows(fc)) + steps_png(fc) + histograms_png(fc)
    for stage, s in fc["steps"].items():
        curve = s["summary"].get("curve")
        if curve:
            out += f"<h3>Routing ({html.escape(stage)})</h3><p>{curve.get('note', '')}</p>" + routing_png(curve)
    human = fc.get("human_labels")
    if human:
        out += "<h3>Human labels merged</h3>" + _table(["what", "count"], [[k, v] for k, v in human.items() if isinstance(v, int)])
    return out
