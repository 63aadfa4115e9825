"""The run report's filter section: the funnel per filter step, score histograms (margin,
voting strength, CHES) and the routing curve, drawn from the filter stage's summary."""

from __future__ import annotations

import html
from typing import Any

from curation.report.plots import BLUE, RED, Section, fig_img, histogram_grid, plt, table

STEP_HEADER = ["step", "kind", "pairs in", "judged", "kept", "filtered", "flipped", "routed", "pairs out", "seconds", "top reasons"]


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


def steps_png(fc: dict[str, Any]) -> str:
    """Pairs alive after each step (bars), with what each step removed, flipped and routed."""
    steps = list(fc["steps"].items())
    names = ["into filters"] + [k for k, _ in steps]
    alive = [fc["pairs_in"]] + [s["pairs_out"] for _, s in steps]
    fig, ax = plt().subplots(figsize=(7, 0.9 + 0.4 * len(names)), dpi=110)
    ys = list(range(len(names)))[::-1]
    ax.barh(ys, alive, color=BLUE, label="alive after the step")
    removed = [0] + [s["filtered"] for _, s in steps]
    ax.barh(ys, removed, left=alive, color=RED, label="filtered by the step")
    for y, a, (_, s) in zip(ys[1:], alive[1:], steps):  # notes right of the bar, past what was removed
        note = ", ".join(f"{s[k]:,} {k}" for k in ("flipped", "routed") if s.get(k))
        if note:
            ax.text(a + s["filtered"], y, f"  {note}", va="center", fontsize=7)
    ax.set_yticks(ys, names)
    ax.set_xlabel("pairs")
    ax.set_title("Filters in order: pairs alive and removed per step")
    ax.set_xlim(0, max(alive[0], 1) * 1.25)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / len(names)), ncol=2, frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig_img(fig, "filter steps")


def histograms_png(fc: dict[str, Any]) -> str:
    """One small histogram per (step, score) the steps recorded (see ``histogram``)."""
    panels = [(f"{stage}: {score}", h) for stage, s in fc["steps"].items() for score, h in s["histograms"].items()]
    return histogram_grid(panels, "filter score histograms")


def routing_png(curve: dict[str, Any]) -> str:
    fig, ax = plt().subplots(figsize=(6, 3.4), dpi=110)
    for name, ys in curve["agreement"].items():
        ax.plot([100 * b for b in curve["budgets"]], [100 * y for y in ys], marker="." if name != "random" else None, label=name)
    ax.set_xlabel("human budget (% of pairs routed)")
    ax.set_ylabel("agreement with human labels (%)")
    ax.set_title(f"Routing on {curve['pairs']:,} human-labelled pairs")
    ax.legend(fontsize=7)
    return fig_img(fig, "routing curve")


def filter_section(f: dict[str, Any]) -> Section | None:
    """The filter stage's section, or None when the recipe had no filter section."""
    if "filter" not in f:
        return None
    fc = f["filter"]
    out = (
        "<p>Steps in the recipe's order; each sees the pairs the previous ones kept. Why a pair went: "
        '<code>curate sql "SELECT stage, decision, reason, count(*) FROM decisions GROUP BY ALL"</code>.</p>'
    )
    rows = [[*r[:-1], r[-1].replace(", ", "\n")] for r in step_rows(fc)]  # one reason a line keeps the table narrow
    out += table(STEP_HEADER, rows) + steps_png(fc)
    hist = histograms_png(fc)
    if hist:
        out += (
            "<h3>Score histograms</h3><p>The scores each step judged pairs by (margin, voting strength, CHES, "
            "similarity, ...); the red dashed line is the step's cut where it has one.</p>" + hist
        )
    for stage, s in fc["steps"].items():
        curve = s["summary"].get("curve")
        if curve:
            out += f"<h3>Routing ({html.escape(stage)})</h3><p>{html.escape(str(curve.get('note', '')))}</p>" + routing_png(curve)
    human = fc.get("human_labels")
    if human:
        out += "<h3>Human labels merged</h3>" + table(["what", "count"], [[k, v] for k, v in human.items() if isinstance(v, int)])
    return Section("filters", "Filters", out)
