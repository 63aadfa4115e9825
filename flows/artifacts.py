"""What a flow run leaves in Prefect's UI: the funnel (markdown and table), per-stage timings
with cache hits, and a link to the dataset version's report.

Only counts, stage names, timings, the dataset name and local paths go in: never config
values. API keys are named in recipes (``api_key_env``) and read from the environment only
by the backend; nothing here reads the config's backend sections, so no key or URL
credential can reach an artifact.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from curation.report.html import funnel_steps, reason_rows
from curation.run.runner import RunResult


def artifact_key(prefix: str, dataset: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"{prefix}-{re.sub(r'[^a-z0-9-]+', '-', dataset.lower())}".strip("-")


def report_link(result: RunResult) -> str:
    report = Path(result.report_dir) / "report.html"
    return report.resolve().as_uri()


def sql_hint(dataset: str) -> str:
    return f"curate sql 'SELECT label_source, count(*) FROM \"{dataset}\".pairs GROUP BY 1'"


def funnel_markdown(result: RunResult, cached: list[str] | None = None) -> str:
    f = result.funnel
    lines = [f"# {result.dataset} v{result.version}", "", "| step | count |", "|---|---:|"]
    lines += [f"| {k} | {abs(v):,} |" for k, v in funnel_steps(f)]
    reasons = reason_rows(f)
    if reasons:
        lines += ["", "| outcome | stage | reason | count |", "|---|---|---|---:|"]
        lines += [f"| {o} | {s} | {r} | {n:,} |" for o, s, r, n in reasons]
    if cached:
        lines += ["", f"Reused from the stage cache: {', '.join(cached)}"]
    lines += [
        "",
        f"Report: [{result.dataset}@{result.version} report.html]({report_link(result)}) (`{result.report_dir}/report.html`)",
        "",
        f"Query it: `{sql_hint(result.dataset)}`",
    ]
    return "\n".join(lines)


def funnel_rows(result: RunResult) -> list[dict[str, Any]]:
    return [{"step": label, "count": abs(n), "removed": n < 0} for label, n in funnel_steps(result.funnel)]


def timing_rows(timings: dict[str, float], cached: list[str]) -> list[dict[str, Any]]:
    return [{"stage": stage, "seconds": round(s, 3), "cached": stage in cached} for stage, s in timings.items()]


def publish_artifacts(result: RunResult, cached: list[str]) -> None:
    """The run's artifacts, keyed per dataset so the UI shows each dataset's history."""
    name = result.dataset
    create_markdown_artifact(funnel_markdown(result, cached), key=artifact_key("funnel", name), description="curation funnel")
    create_table_artifact(funnel_rows(result), key=artifact_key("funnel-table", name), description=f"{name} v{result.version}: funnel")
    create_table_artifact(
        timing_rows(result.timings, cached),
        key=artifact_key("timings", name),
        description=f"{name} v{result.version}: seconds per stage (cached: reused, not rerun)",
    )
    create_link_artifact(
        report_link(result),
        link_text=f"{name}@{result.version} report",
        key=artifact_key("report", name),
        description=f"Run report of {name} v{result.version}. Query it: {sql_hint(name)}",
    )
