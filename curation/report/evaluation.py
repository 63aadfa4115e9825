"""The report's evaluation section: how well proxy models trained on the published pairs agree
with held-out human preferences, beside the trivial baselines on the same pairs; for a
comparison or an ablation, each variant's difference with its paired interval. Drawn from the
evaluate stage's summary, and for the later ``curate eval`` runs that measured this version,
from the rows its report was last written with (``curate eval`` rewrites the report of each
version it measured; ``curate report --rebuild`` reads the evaluation log again)."""

from __future__ import annotations

import html
from typing import Any

from curation.report.plots import BLUE, GREY, Section, fig_img, plt, table

EVALUATION_HEADER = ["variant", "trainer", "eval pairs", "accuracy", "95% CI", "vs reference (paired 95% CI)", "train pairs", "seconds"]


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def evaluation_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    out = []
    for r in rows:
        diff = ""
        if r.get("difference") is not None:
            diff = f"{100 * r['difference']:+.1f} pt ({100 * r['difference_low']:+.1f} to {100 * r['difference_high']:+.1f}) vs {r['reference']}"
        out.append(
            [
                r["variant"],
                r["trainer"],
                r["eval_pairs"],
                _pct(r["accuracy"]),
                f"{_pct(r['ci_low'])} - {_pct(r['ci_high'])}",
                diff,
                r["train_pairs"],
                "" if r.get("seconds") in (None, 0.0) else f"{r['seconds']:.1f}",
            ]  # fmt: skip
        )
    return out


def evaluation_png(rows: list[dict[str, Any]]) -> str:
    """Accuracy with its interval per (variant, trainer); baselines in grey; 50% marked."""
    pyplot = plt()
    labels = [f"{r['variant']} / {r['trainer']}" for r in rows]
    acc = [100 * r["accuracy"] for r in rows]
    err = [[100 * (r["accuracy"] - r["ci_low"]) for r in rows], [100 * (r["ci_high"] - r["accuracy"]) for r in rows]]
    colours = [GREY if r["trainer"].startswith("baseline:") else BLUE for r in rows]
    fig, ax = pyplot.subplots(figsize=(7, 0.9 + 0.3 * len(rows)), dpi=110)
    ax.barh(labels[::-1], acc[::-1], xerr=[err[0][::-1], err[1][::-1]], color=colours[::-1], capsize=3)
    ax.axvline(50, color="#888", linestyle=":", linewidth=1)
    ax.set_xlabel("agreement with held-out human preferences (%), 95% interval")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(0, 100)
    return fig_img(fig, "evaluation accuracy")


def evaluation_section(f: dict[str, Any]) -> Section | None:
    e = f.get("evaluation")
    if not e or not e.get("rows"):
        return None
    rows = e["rows"]
    out = (
        f"<p>Proxy models trained on the published pairs, measured on {e['eval_pairs']:,} human-labelled evaluation pairs "
        f"they never saw ({html.escape(str(rows[0].get('eval_set', '')))}; {e['leaked_excluded']:,} left out because their "
        "prompt is in the training pairs). The baselines use no training at all: a proxy model earns its place above them. "
        '<code>curate sql "SELECT * FROM evaluations"</code>.</p>'
    )
    return Section("evaluation", "Evaluation", out + table(EVALUATION_HEADER, evaluation_rows(rows)) + evaluation_png(rows))


def later_evaluations_section(summary: dict[str, Any]) -> Section | None:
    """Each ``curate eval`` that measured this version after it was published: what was
    compared, on which pairs, with the paired differences to its first variant."""
    runs = summary.get("later_evaluations") or []
    if not runs:
        return None
    me = f"{summary['dataset']}@{summary['version']}"
    parts = [
        f"<p>{len(runs)} evaluation(s) by <code>curate eval</code> that measured {html.escape(me)} after it was published, "
        "each whole: the variants compared, the baselines and each variant's paired difference, on the same evaluation pairs. "
        '<code>curate sql "SELECT * FROM evaluation_log"</code>.</p>'
    ]
    for rows in runs:
        first = rows[0]
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        parts.append(
            f"<h3>{html.escape(' vs '.join(variants))}</h3><p>Evaluation <code>{html.escape(str(first['evaluation_id']))}</code>: "
            f"{first['eval_pairs']:,} pairs from {html.escape(str(first.get('eval_set') or ''))} "
            f"({first['leaked_excluded']:,} left out because their prompt is in a variant's training pairs).</p>"
        )
        parts.append(table(EVALUATION_HEADER, evaluation_rows(rows)) + evaluation_png(rows))
    return Section("later-evaluations", "Later evaluations", "".join(parts))
