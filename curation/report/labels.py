"""The run report's label section: what each labeler did, its margins, how it agrees with the
human labels, and how the labelers agree with each other.

Everything comes from the label stage's counts in the summary: agreement with the human, the
calibration curve, the pairwise agreement between labelers and the margin histograms (the
stage computes the last two from its labels table: ``curation.stages.label.agreement``). The
report never reads a table. Ensembles count as one labeler (their ``GROUP/mean`` margin, the
quantity the filters use), so five BT members do not fill the matrix with near-copies of
each other.
"""

from __future__ import annotations

import html
from typing import Any

from curation.report.plots import Section, fig_img, histogram_grid, plt, table

AGREEMENT_HEADER = [
    "labeler",
    "kind",
    "pairs",
    "decided",
    "ties",
    "invalid",
    "accuracy",
    "95% CI",
    "longer wins (same pairs)",
    "margin~length",
    "position bias",
    "order consistency",
]
AGREEMENT_NOTE = (
    "accuracy = agree / decided; fewer than 10 decided pairs: no accuracy. 'longer wins': the length baseline on the "
    "same pairs; margin~length: rank correlation of the margin with log(len chosen / len rejected); position bias: "
    "share of a judge's answers picking the response shown first (0.5 = none)."
)
LENGTH_BINS_HEADER = ["labeler", "bin", "|log length ratio|", "pairs", "decided", "accuracy", "longer wins"]
LABELER_HEADER = ["labeler", "kind", "models", "pairs", "label rows", "A / B / tie / invalid", "from cache", "seconds"]
MAX_MARGIN_PANELS = 9


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _ci(r: dict[str, Any]) -> str:
    return f"{100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}%" if r.get("ci_low") is not None else ""


def _decided(r: dict[str, Any]) -> int:
    return r.get("n_decided", r.get("n_agree", 0) + r.get("n_disagree", 0))  # older summaries lack n_decided


def _corr(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f}"


def agreement_rows(labels: dict[str, Any]) -> list[list[Any]]:
    """Per labeler: agreement with the human labels (decided, ties and invalid counted apart),
    beside the length baseline on the same pairs and the judge's position bias."""
    return [
        [
            r["labeler"],
            r["kind"],
            r["n"],
            _decided(r),
            r.get("n_tie", ""),
            r.get("n_invalid", ""),
            _pct(r["accuracy"]) if r.get("accuracy") is not None else ("-" if _decided(r) < 10 else ""),
            _ci(r),
            _pct(r.get("length_accuracy")),
            _corr(r.get("length_correlation")),
            _pct(r.get("position_bias")),
            _pct(r.get("consistency_rate")),
        ]
        for r in labels.get("agreement", [])
    ]


def length_bin_rows(labels: dict[str, Any]) -> list[list[Any]]:
    """Length-controlled agreement: each labeler within bins of |log(len chosen / len rejected)|."""
    return [
        [
            r["labeler"],
            r["bin"],
            f"{r['log_ratio_low']:.2f} - {r['log_ratio_high']:.2f}",
            r["n"],
            r["n_decided"],
            _pct(r.get("accuracy")) or "-",
            _pct(r.get("length_accuracy")),
        ]
        for r in labels.get("length_bins", [])
    ]


def labeler_rows(labels: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, c in labels["labelers"].items():
        v = c["verdicts"]
        rows.append(
            [
                name,
                c["kind"],
                ", ".join(c["models"]),
                c["pairs"],
                c["rows"],
                f"{v.get('A', 0)} / {v.get('B', 0)} / {v.get('tie', 0)} / {v.get('invalid', 0)}",
                c.get("labels_reused", ""),  # the label cache: pairs labelled by an earlier (maybe killed) run
                f"{c['seconds']:.1f}",
            ]
        )
    return rows


# --------------------------------------------------------------------------- HTML


def calibration_png(labels: dict[str, Any]) -> str:
    """P(agree with the human) per |margin| quantile bin, one line per labeler."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in labels.get("calibration", []):
        if r.get("accuracy") is not None:
            curves.setdefault(r["labeler"], []).append((r["bin"], r["accuracy"]))
    if not curves:
        return ""
    fig, ax = plt().subplots(figsize=(7, 3.4), dpi=110)
    bins: set[int] = set()
    for name, points in sorted(curves.items()):
        xs, ys = zip(*sorted(points))
        bins.update(xs)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xticks(sorted(bins))
    ax.axhline(0.5, color="#999", linestyle="--", linewidth=1)
    ax.set_xlabel("|margin| quantile bin (0 = smallest margins)")
    ax.set_ylabel("P(agrees with human)")
    ax.set_ylim(0, 1)
    ax.set_title("Calibration: agreement with human labels against margin")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig_img(fig, "calibration")


def _cell_colour(rate: float | None) -> str:
    """White at 50% (chance for two coin flips), green towards 100%, red towards 0%."""
    if rate is None:
        return "#fff"
    x = max(-1.0, min(1.0, 2 * rate - 1))
    hue = 120 if x >= 0 else 0
    return f"hsl({hue},55%,{100 - 35 * abs(x):.0f}%)"


def pairwise_html(rows: list[dict[str, Any]]) -> str:
    """The pairwise matrix: labelers are numbered so long names do not widen the columns."""
    names = sorted({r["a"] for r in rows} | {r["b"] for r in rows})
    if len(names) < 2:
        return "<p>Fewer than two labelers decided the same pairs.</p>"
    by = {(r["a"], r["b"]): r for r in rows} | {(r["b"], r["a"]): r for r in rows}
    head = "<th></th>" + "".join(f"<th>{i + 1}</th>" for i in range(len(names)))
    body = ""
    for i, a in enumerate(names):
        cells = ""
        for b in names:
            if a == b:
                cells += '<td class="num diag">-</td>'
                continue
            r = by.get((a, b))
            if r is None or r["rate"] is None:
                cells += '<td class="num">n/a</td>'
                continue
            kappa = "" if r["kappa"] is None else f"; kappa {r['kappa']:.2f}"
            title = html.escape(f"{a} vs {b}: {r['agree']:,} of {r['n']:,} pairs{kappa}")
            cells += (
                f'<td class="num" style="background:{_cell_colour(r["rate"])}" title="{title}">'
                f"{100 * r['rate']:.0f}%<br><small>n={r['n']:,}</small></td>"
            )
        body += f"<tr><th>{i + 1}. {html.escape(a)}</th>{cells}</tr>"
    pairs = table(
        ["labeler", "labeler", "pairs both decided", "same verdict", "agreement", "Cohen's kappa"],
        [[r["a"], r["b"], r["n"], r["agree"], _pct(r["rate"]), "" if r["kappa"] is None else f"{r['kappa']:.2f}"] for r in rows],
    )
    return (
        f'<div class="scroll"><table class="matrix"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
        f"<details><summary>As a list, with Cohen's kappa</summary>{pairs}</details>"
    )


def labels_sections(f: dict[str, Any]) -> list[Section]:
    """The label stage's sections: labelers (with margins) and agreement; none without labels."""
    if "labels" not in f:
        return []
    labels = f["labels"]
    out = "<p>One row per (pair, labeler) in the <code>labels</code> table; slot A is the pair's chosen response.</p>"
    out += table(LABELER_HEADER, labeler_rows(labels))
    margins = labels.get("margins") or {}
    if margins:
        shown = list(margins.items())[:MAX_MARGIN_PANELS]
        more = f" (the first {MAX_MARGIN_PANELS} of {len(margins)})" if len(margins) > MAX_MARGIN_PANELS else ""
        out += (
            f"<h3>Margin histograms{more}</h3><p>Positive margins side with the chosen response; ensembles are shown "
            "as the mean of their members.</p>" + histogram_grid(shown, "label margin histograms")
        )
    agree = (
        "<h3>Agreement with human labels</h3><p>Over the human-labelled pairs each labeler labelled: accuracy = agree / "
        "(agree + disagree), ties and invalid labels reported apart; bootstrap 95% interval. Per source and per |margin| "
        'bin: <code>curate sql "SELECT * FROM agreement"</code>.</p>'
    )
    if labels.get("agreement"):
        agree += table(AGREEMENT_HEADER, agreement_rows(labels)) + f"<p><small>{html.escape(AGREEMENT_NOTE)}</small></p>"
    else:
        agree += "<p>No human-labelled pair was labelled.</p>"
    agree += calibration_png(labels)
    if labels.get("length_bins"):
        agree += (
            "<h3>Length-controlled agreement</h3><p>Each labeler within quantile bins of |log(len chosen / len rejected)| "
            "(bin 0: the most equal lengths), beside the longer-wins baseline on the same pairs. A labeler that only "
            "tracks length is good where the lengths differ a lot and at chance where they are alike.</p>"
        )
        agree += table(LENGTH_BINS_HEADER, length_bin_rows(labels))
    agree += (
        "<h3>Agreement between labelers</h3><p>Share of the pairs both labelers decided (A or B) on which they give the "
        "same verdict; hover a cell for the counts and Cohen's kappa.</p>"
    )
    if "pairwise" in labels:
        agree += pairwise_html(labels["pairwise"])
    else:
        agree += "<p>Not available: this version was published by a version of curate that did not record it.</p>"
    return [Section("labels", "Labels", out), Section("agreement", "Label agreement", agree)]
