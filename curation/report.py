"""The run report: ``summary.json`` for machines, ``report.html`` (with the funnel plot)
for people. The HTML is self-contained (the plot is embedded) so it can be mailed or
attached to a Prefect run as is.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any


def funnel_steps(f: dict[str, Any]) -> list[tuple[str, int]]:
    """The funnel as ordered (label, count) steps, shared by the plot, the HTML and the CLI."""
    return (
        [
            ("rows in", f["rows_in"]),
            ("quarantined at read/adapt", -f["rows_quarantined"]),
            ("filtered at adapt", -f["rows_filtered"]),
            ("pairs produced", f["pairs_out"]),
            ("quarantined at validate", -f["pairs_quarantined"]),
            ("filtered (dedup)", -f["pairs_filtered"]),
            ("kept", f["kept"]),
        ]
        + (
            [
                ("generated pairs considered", f["generated"]["pairs_considered"]),
                ("filtered (generate)", -sum(f["generated"]["filtered"].values())),
                ("generated pairs kept (unlabeled)", f["generated"]["pairs_kept"]),
            ]
            if "generated" in f
            else []
        )
        + (filter_steps(f["filter"]) if "filter" in f else [])
    )


def filter_steps(fc: dict[str, Any]) -> list[tuple[str, int]]:
    """The filter stage's part of the funnel: each step's removals, then what is published."""
    steps = [("pairs into the filters", fc["pairs_in"])]
    for stage, s in fc["steps"].items():
        if s["filtered"]:
            steps.append((f"filtered ({stage})", -s["filtered"]))
    human = fc.get("human_labels", {})
    if human.get("filtered"):
        steps.append(("filtered (human ties)", -human["filtered"]))
    steps.append(("published pairs", fc["pairs_out"]))
    return steps


def reason_rows(f: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    """(outcome, stage, reason, count) for every non-kept outcome, largest first."""
    rows = []
    for stage, codes in f["quarantined_by_error"].items():
        rows += [("quarantined", stage, code, n) for code, n in codes.items()]
    for stage, reasons in f["filtered_by_reason"].items():
        rows += [("filtered", stage, reason, n) for reason, n in reasons.items()]
    if "generated" in f:
        rows += [("filtered", "generate", reason, n) for reason, n in f["generated"]["filtered"].items()]
    for stage, reasons in f.get("filter", {}).get("filtered_by_reason", {}).items():
        rows += [("filtered", stage, reason, n) for reason, n in reasons.items()]
    for stage, s in f.get("filter", {}).get("steps", {}).items():
        rows += [(outcome, stage, "", s[outcome]) for outcome in ("flipped", "routed") if s[outcome]]
    return sorted(rows, key=lambda r: -r[3])


def funnel_png(f: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = funnel_steps(f)
    labels = [s[0] for s in steps][::-1]
    values = [abs(s[1]) for s in steps][::-1]
    colors = ["#c0392b" if s[1] < 0 else "#2e86c1" for s in steps][::-1]
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    bars = ax.barh(labels, values, color=colors)
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3, fontsize=8)
    ax.set_xlabel("rows / pairs")
    ax.set_title("Curation funnel (red: removed at that step)")
    ax.set_xlim(0, max(values + [1]) * 1.15)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


GENERATION_HEADER = ["strategy", "candidates", "requests sent / reused", "tokens", "cosine distance", "distinct-1", "distinct-2", "words"]


def _generation_html(f: dict[str, Any]) -> str:
    if "generated" not in f:
        return ""
    g = f["generated"]
    b = g["backend"]
    return (
        f"<h2>Generation</h2><p>{g['prompts']} prompts, {g['params']['n']} candidates each, model "
        f"<code>{html.escape(str(b.get('model')))}</code> on <code>{html.escape(str(b.get('backend')))}</code>; "
        "diversity is the mean over prompts of the candidate set's mean pairwise cosine distance and distinct-n "
        "(higher is more diverse).</p>" + _table(GENERATION_HEADER, generation_rows(g))
    )


AGREEMENT_HEADER = ["labeler", "kind", "pairs", "accuracy", "95% CI", "ties", "invalid", "position consistency"]
LABELER_HEADER = ["labeler", "kind", "models", "pairs", "label rows", "A / B / tie / invalid", "seconds"]


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
                f"{c['seconds']:.1f}",
            ]
        )
    return rows


def calibration_png(labels: dict[str, Any]) -> bytes | None:
    """P(agree with the human) per |margin| quantile bin, one line per labeler."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in labels.get("calibration", []):
        if r.get("accuracy") is not None:
            curves.setdefault(r["labeler"], []).append((r["bin"], r["accuracy"]))
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    for name, points in sorted(curves.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=name)
    ax.axhline(0.5, color="#999", linestyle="--", linewidth=1)
    ax.set_xlabel("|margin| quantile bin (0 = smallest margins)")
    ax.set_ylabel("P(agrees with human)")
    ax.set_ylim(0, 1)
    ax.set_title("Calibration: agreement with human labels against margin")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _labels_html(f: dict[str, Any]) -> str:
    if "labels" not in f:
        return ""
    labels = f["labels"]
    out = "<h2>Labels</h2><p>One row per (pair, labeler) in the <code>labels</code> table; slot A is the pair's chosen response.</p>"
    out += _table(LABELER_HEADER, labeler_rows(labels))
    out += (
        "<h2>Agreement with human labels</h2><p>Over the human-labelled pairs each labeler labelled: accuracy = agree / "
        "(agree + disagree), ties and invalid labels reported apart; bootstrap 95% interval. Per source and per |margin| bin: "
        '<code>curate sql "SELECT * FROM agreement"</code>.</p>'
    )
    out += _table(AGREEMENT_HEADER, agreement_rows(labels)) if labels.get("agreement") else "<p>No human-labelled pair was labelled.</p>"
    png = calibration_png(labels)
    if png:
        out += f'<img alt="calibration" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    return out


def render_html(summary: dict[str, Any], png: bytes) -> str:
    from curation.report_filters import filter_html

    f = summary["funnel"]
    img = base64.b64encode(png).decode()
    steps = _table(["step", "count"], [[k, f"{abs(v):,}"] for k, v in funnel_steps(f)])
    reasons = reason_rows(f)
    reasons_html = _table(["outcome", "stage", "reason", "count"], [list(r) for r in reasons]) if reasons else "<p>None.</p>"
    sources = _table(
        ["source", "rows in", "quarantined", "filtered", "rows with pairs", "pairs"],
        [
            [n, c["rows_in"], sum(c["quarantined"].values()), sum(c["filtered"].values()), c["rows_with_pairs"], c["pairs_out"]]
            for n, c in f["sources"].items()
        ],
    )
    timings = _table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in summary.get("timings_s", {}).items()])
    inputs = _table(
        ["source", "file", "bytes", "sha256"],
        [
            [i.get("source"), i.get("path") or i.get("id"), i.get("bytes", ""), (i.get("sha256") or i.get("fingerprint") or "")[:16]]
            for i in summary.get("inputs", [])
        ],
    )
    title = f"{summary['dataset']} v{summary['version']}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)} - curation report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}}
table{{border-collapse:collapse;margin:.5rem 0 1.5rem}}td,th{{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}}
th{{background:#f2f2f2}}code{{background:#f6f6f6;padding:0 .2rem}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Created {html.escape(str(summary.get("created_at", "")))} &middot; config <code>{html.escape(summary.get("config_hash", ""))}</code>
&middot; code <code>{html.escape(summary.get("code_version", ""))}</code> &middot; run <code>{html.escape(summary.get("run_id", ""))}</code>
&middot; parents: {html.escape(", ".join(summary.get("parents") or []) or "none")}</p>
<p><b>{f["rows_in"]:,}</b> rows in, <b>{f["kept"]:,}</b> pairs kept{published_note(f)}.
Query it: <code>curate sql "SELECT * FROM {html.escape(summary["dataset"])}.pairs LIMIT 5"</code></p>
<h2>Funnel</h2><img alt="funnel" src="data:image/png;base64,{img}">
{steps}
<h2>Filtered and quarantined, by reason</h2>{reasons_html}
{_generation_html(f)}
{_labels_html(f)}
{filter_html(f)}
<h2>Sources</h2>{sources}
<h2>Stage timings</h2>{timings}
<h2>Inputs</h2>{inputs}
</body></html>
"""


def published_note(f: dict[str, Any]) -> str:
    fc = f.get("filter")
    return f", <b>{fc['pairs_out']:,}</b> published after the filters" if fc else ""


def write_report(summary: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = funnel_png(summary["funnel"])
    paths = {"summary": out / "summary.json", "html": out / "report.html", "funnel": out / "funnel.png"}
    paths["summary"].write_text(json.dumps(summary, indent=2, default=str))
    paths["funnel"].write_bytes(png)
    paths["html"].write_text(render_html(summary, png), encoding="utf-8")
    return paths
