"""The run report: ``summary.json`` for machines, ``report.html`` for people.

``report.html`` is one self-contained file: every figure is a PNG inside a ``data:`` URI and
the style sheet is inline, with no external CSS, JS, fonts or links, so it can be mailed,
attached to a Prefect run, or opened from an object store. Sections appear only for the stages
that ran: funnel, stage timings, reasons, generation (diversity per strategy), labels (margins,
agreement with humans and between labelers), filters (score histograms), evaluation, response
lengths of the published pairs, sources and inputs.
Every piece of text from the summary is escaped. The report shows only what the summary holds:
no config values, so no API key (recipes name the environment variable, never the key).

The sections live in ``generation``, ``labels``, ``filters``, ``evaluation`` and ``lengths``
of this package; this module assembles them.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any

from curation.report.evaluation import evaluation_section, later_evaluations_section
from curation.report.filters import filter_section
from curation.report.generation import GENERATION_HEADER, generation_rows, generation_section
from curation.report.labels import AGREEMENT_HEADER, LABELER_HEADER, agreement_rows, labeler_rows, labels_sections
from curation.report.lengths import lengths_section
from curation.report.plots import BLUE, RED, Section, img, plt, png_bytes, table

__all__ = [
    "AGREEMENT_HEADER",
    "GENERATION_HEADER",
    "LABELER_HEADER",
    "agreement_rows",
    "funnel_png",
    "funnel_steps",
    "generation_rows",
    "labeler_rows",
    "reason_rows",
    "render_html",
    "write_report",
]


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
        + ([("held out for evaluation", -f["evaluation_set"]["held_out"])] if "evaluation_set" in f else [])
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
    steps = funnel_steps(f)
    labels = [s[0] for s in steps][::-1]
    values = [abs(s[1]) for s in steps][::-1]
    colors = [RED if s[1] < 0 else BLUE for s in steps][::-1]
    fig, ax = plt().subplots(figsize=(7, 1.0 + 0.26 * len(steps)), dpi=110)
    bars = ax.barh(labels, values, color=colors)
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3, fontsize=8)
    ax.set_xlabel("rows / pairs")
    ax.set_title("Curation funnel (red: removed at that step)")
    ax.set_xlim(0, max(values + [1]) * 1.15)
    ax.tick_params(axis="y", labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return png_bytes(fig)


def _funnel_section(f: dict[str, Any], png: bytes) -> Section:
    steps = table(["step", "count"], [[k, f"{abs(v):,}"] for k, v in funnel_steps(f)], cls="narrow")
    return Section("funnel", "Funnel", img(png, "funnel") + steps)


def _timings_section(timings: dict[str, float]) -> Section | None:
    """Seconds per stage, with a bar drawn in HTML (a figure would be overkill for 4-7 numbers)."""
    if not timings:
        return None
    total = sum(timings.values())
    top = max(timings.values()) or 1.0
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td class='num'>{v:,.2f}</td><td class='num'>{100 * v / total if total else 0:.0f}%</td>"
        f"<td class='barcell'><div class='bar' style='width:{100 * v / top:.1f}%'></div></td></tr>"
        for k, v in timings.items()
    )
    rows += f"<tr class='total'><td>total</td><td class='num'>{total:,.2f}</td><td class='num'>100%</td><td></td></tr>"
    return Section(
        "timings",
        "Stage timings",
        '<div class="scroll"><table class="narrow"><thead><tr><th>stage</th><th>seconds</th><th>share</th>'
        f'<th class="barcell"></th></tr></thead><tbody>{rows}</tbody></table></div>',
    )


def _reasons_section(f: dict[str, Any]) -> Section:
    reasons = reason_rows(f)
    body = table(["outcome", "stage", "reason", "count"], [list(r) for r in reasons]) if reasons else "<p>None.</p>"
    return Section("reasons", "Filtered and quarantined, by reason", body)


def _sources_section(f: dict[str, Any]) -> Section:
    return Section(
        "sources",
        "Sources",
        table(
            ["source", "rows in", "quarantined", "filtered", "rows with pairs", "pairs"],
            [
                [n, c["rows_in"], sum(c["quarantined"].values()), sum(c["filtered"].values()), c["rows_with_pairs"], c["pairs_out"]]
                for n, c in f["sources"].items()
            ],
        ),
    )


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(location: Any) -> str:
    """An input's path or URL without credentials: ``user:secret@`` and a query string (a
    presigned URL's signature) are cut."""
    text = str(location or "")
    return _USERINFO.sub("", text.split("?", 1)[0]) if "://" in text else text


def _inputs_section(inputs: list[dict[str, Any]]) -> Section:
    return Section(
        "inputs",
        "Inputs",
        table(
            ["source", "file", "bytes", "sha256"],
            [
                [
                    i.get("source"),
                    redact(i.get("path") or i.get("id")),
                    i.get("bytes", ""),
                    (i.get("sha256") or i.get("fingerprint") or "")[:16],
                ]
                for i in inputs
            ],
        ),
    )


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:70rem;margin:1.5rem auto;padding:0 1rem;color:#222;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #e5e5e5;padding-bottom:.2rem;margin-top:2rem}h3{margin-bottom:.3rem}
.meta{color:#555;font-size:.9rem;margin-top:0}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.5rem 0 1.2rem;font-size:.9rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left;vertical-align:top;white-space:pre-line}
th{background:#f2f2f2}td.num{text-align:right}table.matrix td.num{text-align:center;min-width:3.5rem}table.matrix td.diag{color:#aaa}
table.matrix small{color:#555}tr.total td{font-weight:600}
td.barcell,th.barcell{width:16rem}.bar{background:#2e86c1;height:.8rem;min-width:1px}
code{background:#f6f6f6;padding:0 .2rem}img{max-width:100%;height:auto;display:block;margin:.5rem 0}
nav.toc{background:#f8f8f8;border:1px solid #e5e5e5;padding:.4rem 1rem;display:inline-block}nav.toc ol{margin:.3rem 0;padding-left:1.3rem}
details{margin-bottom:1rem}
"""


def sections(summary: dict[str, Any], png: bytes) -> list[Section]:
    """The report's sections in reading order; stages that did not run have none."""
    f = summary["funnel"]
    out: list[Section | None] = [
        _funnel_section(f, png),
        _timings_section(summary.get("timings_s") or {}),
        _reasons_section(f),
        generation_section(f),
        *labels_sections(f),
        filter_section(f),
        evaluation_section(f),
        later_evaluations_section(summary),
        lengths_section(summary),
        _sources_section(f),
        _inputs_section(summary.get("inputs") or []),
    ]
    return [s for s in out if s is not None]


def title(summary: dict[str, Any]) -> str:
    return f"{summary['dataset']}@{summary['version']}"


def render_html(summary: dict[str, Any], png: bytes) -> str:
    f = summary["funnel"]
    parts = sections(summary, png)
    toc = "".join(f'<li><a href="#{html.escape(s.anchor)}">{html.escape(s.title)}</a></li>' for s in parts)
    esc = lambda key: html.escape(str(summary.get(key) or ""))  # noqa: E731 - local shorthand
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title(summary))} - curation report</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title(summary))}</h1>
<p class="meta">Created {esc("created_at")} &middot; config <code>{esc("config_hash")}</code>
&middot; code <code>{esc("code_version")}</code> &middot; run <code>{esc("run_id")}</code>
&middot; parents: {html.escape(", ".join(summary.get("parents") or []) or "none")}</p>
<p><b>{f["rows_in"]:,}</b> rows in, <b>{f["kept"]:,}</b> pairs kept{published_note(f)}.
Query it: <code>curate sql {html.escape(query_hint(summary["dataset"]))}</code></p>
<nav class="toc"><b>Contents</b><ol>{toc}</ol></nav>
{"".join(s.html() for s in parts)}
</body></html>
"""


def query_hint(dataset: str) -> str:
    """A ``curate sql`` argument that works when pasted into a shell: dataset names may hold
    "-", so the name is a quoted SQL identifier inside single shell quotes."""
    return f"'SELECT * FROM \"{dataset}\".pairs LIMIT 5'"


def published_note(f: dict[str, Any]) -> str:
    fc = f.get("filter")
    return f", <b>{fc['pairs_out']:,}</b> published after the filters" if fc else ""


def _write(path: Path, data: bytes) -> None:
    """Write then rename, so a reader (or a crash) never sees half a report."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # two writers at once (two curate eval) never share one
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(summary: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = funnel_png(summary["funnel"])
    paths = {"summary": out / "summary.json", "html": out / "report.html", "funnel": out / "funnel.png"}
    _write(paths["summary"], json.dumps(summary, indent=2, default=str).encode())
    _write(paths["funnel"], png)
    _write(paths["html"], render_html(summary, png).encode("utf-8"))
    return paths
