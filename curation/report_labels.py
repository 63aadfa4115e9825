"""The run report's label section: what each labeler did, its margins, how it agrees with the
human labels, and how the labelers agree with each other.

Agreement with the human and the calibration curve come from the label stage's summary. The
pairwise agreement between labelers and the margin histograms need the ``labels`` table
itself, so ``label_extras`` reads them once from the published version when the report is
written and keeps them in ``summary.json`` (the report never reads tables while rendering).
Ensembles count as one labeler (their ``GROUP/mean`` margin, the quantity the filters use),
so five BT members do not fill the matrix with near-copies of each other.
"""

from __future__ import annotations

import html
from itertools import combinations
from typing import Any

import polars as pl

from curation.label.agreement import LABEL_COLUMNS, ensemble_means
from curation.report_filters import histogram
from curation.report_plots import Section, fig_img, histogram_grid, plt, table

AGREEMENT_HEADER = ["labeler", "kind", "pairs", "accuracy", "95% CI", "ties", "invalid", "position consistency"]
LABELER_HEADER = ["labeler", "kind", "models", "pairs", "label rows", "A / B / tie / invalid", "from cache", "seconds"]
MAX_MARGIN_PANELS = 9


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def agreement_rows(labels: dict[str, Any]) -> list[list[Any]]:
    """Per labeler: agreement with the human labels (ties and invalid labels apart)."""
    return [
        [
            r["labeler"],
            r["kind"],
            r["n"],
            _pct(r["accuracy"]),
            f"{_pct(r['ci_low'])} - {_pct(r['ci_high'])}" if r.get("ci_low") is not None else "",
            _pct(r["tie_rate"]),
            _pct(r["invalid_rate"]),
            _pct(r.get("consistency_rate")),
        ]
        for r in labels.get("agreement", [])
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


# --------------------------------------------------------------------------- from the labels table


def comparable_labels(labels: pl.DataFrame) -> pl.DataFrame:
    """One labeler per ensemble (its ``GROUP/mean``) plus every single labeler."""
    labels = labels.select(LABEL_COLUMNS)
    means = ensemble_means(labels)
    grouped = means["labeler_group"].unique().to_list()
    singles = labels.filter(~pl.col("labeler_group").is_in(grouped)) if grouped else labels
    return pl.concat([singles, means], how="vertical_relaxed")


def pairwise_agreement(labels: pl.DataFrame) -> list[dict[str, Any]]:
    """For every two labelers, over the pairs both decided (verdict A or B): how often they
    give the same verdict, and Cohen's kappa (agreement beyond what their A/B rates give by
    chance; slot A is the human-chosen response, so raw agreement alone is flattered when both
    mostly say A)."""
    df = comparable_labels(labels).filter(pl.col("verdict").is_in(["A", "B"]))
    if df.is_empty():
        return []
    wide = df.select("pair_id", "labeler", "verdict").pivot(on="labeler", index="pair_id", values="verdict", aggregate_function="first")
    names = sorted(c for c in wide.columns if c != "pair_id")
    rows = []
    for a, b in combinations(names, 2):
        both = wide.select(a, b).drop_nulls()
        n = both.height
        if n == 0:
            rows.append({"a": a, "b": b, "n": 0, "agree": 0, "rate": None, "kappa": None})
            continue
        agree = int((both[a] == both[b]).sum())
        pa_, pb_ = float((both[a] == "A").mean()), float((both[b] == "A").mean())
        expected = pa_ * pb_ + (1 - pa_) * (1 - pb_)
        kappa = (agree / n - expected) / (1 - expected) if expected < 1 else None
        rows.append({"a": a, "b": b, "n": n, "agree": agree, "rate": agree / n, "kappa": kappa})
    return rows


def margin_histograms(labels: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Per (comparable) labeler: the histogram of its margins (positive: sides with slot A)."""
    df = comparable_labels(labels).filter(pl.col("margin").is_not_null())
    out = {}
    for (name,), part in sorted(df.group_by(["labeler"]), key=lambda kv: str(kv[0][0])):
        h = histogram(part["margin"].to_list())
        if h is not None:
            out[str(name)] = h
    return out


def label_extras(summary: dict[str, Any]) -> dict[str, Any]:
    """``pairwise`` and ``margins`` for the label section, from the published labels table.
    A report is written after the version is committed, so it must not fail the run: when the
    table cannot be read the section says why instead."""
    from curation.errors import CurationError
    from curation.store import DatasetStore

    try:
        table = DatasetStore(summary["data_root"]).read(
            summary["dataset"], "labels", version=summary["version"], columns=list(LABEL_COLUMNS)
        )
    except (CurationError, OSError, KeyError, ValueError) as err:
        return {"extras_error": f"{type(err).__name__}: {err}"}
    labels = pl.from_arrow(table)
    return {"pairwise": pairwise_agreement(labels), "margins": margin_histograms(labels)}


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
    agree += table(AGREEMENT_HEADER, agreement_rows(labels)) if labels.get("agreement") else "<p>No human-labelled pair was labelled.</p>"
    agree += calibration_png(labels)
    agree += (
        "<h3>Agreement between labelers</h3><p>Share of the pairs both labelers decided (A or B) on which they give the "
        "same verdict; hover a cell for the counts and Cohen's kappa.</p>"
    )
    if "pairwise" in labels:
        agree += pairwise_html(labels["pairwise"])
    else:
        agree += f"<p>Not available: {html.escape(str(labels.get('extras_error', 'the labels table was not read')))}.</p>"
    return [Section("labels", "Labels", out), Section("agreement", "Label agreement", agree)]
