"""The run report's generation section: per strategy, what it cost and how diverse its
candidate sets are, next to i.i.d. sampling on the same prompts (the yardstick: a strategy
"worked" when it beats i.i.d.). Drawn from the generate stage's summary only."""

from __future__ import annotations

import html
from typing import Any

from curation.report.plots import BLUE, GREEN, GREY, Section, fig_img, plt, table

GENERATION_HEADER = ["strategy", "candidates", "requests sent / reused", "tokens", "cosine distance", "distinct-1", "distinct-2", "words"]
DIVERSITY_METRICS = [("mean_cosine_distance", "mean pairwise cosine distance"), ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2")]
BASELINE = "iid"


def generation_rows(g: dict[str, Any]) -> list[list[Any]]:
    """Per strategy: what it cost and how diverse its candidate sets are (i.i.d. is the yardstick)."""
    rows = []
    for name, cost in g["strategies"].items():
        d = g["diversity"].get(name, {})
        label = f"{name} (published)" if name == g["strategy"] else name
        rows.append(
            [
                label,
                f"{cost['candidates']}" + (f" ({cost['fallback']} i.i.d. fallback)" if cost.get("fallback") else ""),
                f"{cost['requests_sent']} / {cost['requests_reused']}",
                cost["completion_tokens"],
                d.get("mean_cosine_distance"),
                d.get("distinct_1"),
                d.get("distinct_2"),
                d.get("mean_words"),
            ]
        )
    return rows


def versus_iid(g: dict[str, Any]) -> list[str]:
    """One sentence per strategy compared with i.i.d. on each diversity metric."""
    base = g["diversity"].get(BASELINE)
    if not base:
        return []
    out = []
    for name, d in g["diversity"].items():
        if name == BASELINE:
            continue
        parts = []
        for key, label in DIVERSITY_METRICS:
            x, y = d.get(key), base.get(key)
            if x is None or y is None:
                continue
            rel = f" ({100 * (x - y) / y:+.0f}%)" if y else ""
            parts.append(f"{label} {x:.3f} vs {y:.3f}{rel}")
        fallback = g["strategies"].get(name, {}).get("fallback")
        if fallback:  # a strategy that fell back to i.i.d. sampling is not a test of the strategy
            parts.append(f"{fallback} of {g['strategies'][name]['candidates']} candidates were i.i.d. fallbacks")
        if parts:
            out.append(f"{name} vs i.i.d.: " + ", ".join(parts))
    return out


def diversity_png(g: dict[str, Any]) -> str:
    """One panel per metric, one bar per strategy; the dashed line is i.i.d.'s value."""
    names = [n for n in g["strategies"] if g["diversity"].get(n)]
    if not names:
        return ""
    fig, axes = plt().subplots(1, len(DIVERSITY_METRICS), figsize=(9, 2.9), dpi=110, squeeze=False)
    colours = [GREY if n == BASELINE else GREEN if n == g["strategy"] else BLUE for n in names]
    for ax, (key, label) in zip(axes.flat, DIVERSITY_METRICS):
        values = [g["diversity"][n].get(key) or 0.0 for n in names]
        bars = ax.bar(range(len(names)), values, color=colours)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
        base = g["diversity"].get(BASELINE, {}).get(key)
        if base is not None:
            ax.axhline(base, color="#444", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=7)
        ax.set_ylim(0, max(values + [0.01]) * 1.2)
        ax.set_title(label, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.suptitle("Diversity per strategy (green: published, grey: i.i.d., dashed: i.i.d. level)", fontsize=9)
    return fig_img(fig, "generation diversity")


def generation_section(f: dict[str, Any]) -> Section | None:
    if "generated" not in f:
        return None
    g = f["generated"]
    b = g["backend"]
    out = (
        f"<p>{g['prompts']} prompts, {g['params']['n']} candidates each, model "
        f"<code>{html.escape(str(b.get('model')))}</code> on <code>{html.escape(str(b.get('backend')))}</code>; "
        "diversity is the mean over prompts of the candidate set's mean pairwise cosine distance and distinct-n "
        "(higher is more diverse).</p>" + table(GENERATION_HEADER, generation_rows(g))
    )
    out += diversity_png(g)
    notes = versus_iid(g)
    if notes:
        out += "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
    return Section("generation", "Generation", out)
