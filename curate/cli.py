"""`curate`: the command line.

Every command has --help. Errors a user can act on print one clear message (no
traceback) and exit with status 2.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from curation.errors import CurationError
from curation.progress import LineProgress, Progress, TeeProgress

app = typer.Typer(
    help="Curate raw preference comparisons into clean, versioned, DPO-ready datasets.\n\n"
    "Start with `curate run recipes/hh-rlhf-sample.yaml`, then `curate datasets list`, "
    '`curate sql "SELECT ... FROM pairs"` and `curate export NAME --format trl --out DIR`.',
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # help paragraphs reflow to the terminal; indented lines stay code
)
datasets_app = typer.Typer(help="List, inspect and compare published datasets and their versions.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
route_app = typer.Typer(
    help="Hybrid human-AI labeling: export the pairs the route step sent to people as annotation tasks, "
    "and import completed labels back (merged as a new dataset version).",
    no_args_is_help=True,
)
app.add_typer(route_app, name="route")

# Pipes and CI logs get a wide console, so tables and the accounting line are not cut.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DataRoot = typer.Option(None, "--data-root", envvar="CURATE_DATA_ROOT", help="Data root (default: ./data, or the recipe's data_root).")


def _root(data_root: str | None) -> str:
    return data_root or "data"


def friendly(fn: Callable) -> Callable:
    """Turn CurationError (and a missing-file OSError) into one line on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CurationError as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; nothing was published by the interrupted stage")
            raise typer.Exit(130) from None

    return wrapper


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'name' or 'name@3' -> (name, version)."""
    name, _, version = ref.partition("@")
    if not version:
        return name, None
    try:
        return name, int(version.lstrip("v"))
    except ValueError:
        raise CurationError(f"invalid dataset reference {ref!r}: use NAME or NAME@VERSION (e.g. hh-harmless@2)") from None


def run_progress(cfg: Any) -> Progress:
    """A bar per stage on a terminal, progress lines on a pipe or in a CI log (at least every
    30 s), and the same lines, time-stamped, in WORK_ROOT/logs/DATASET.log."""
    log = Path(cfg.work_root) / "logs" / f"{cfg.publish.dataset}.log"
    log.parent.mkdir(parents=True, exist_ok=True)

    def to_log(line: str) -> None:
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"{dt.datetime.now().astimezone().isoformat(timespec='seconds')} {line}\n")

    def to_stderr(line: str) -> None:
        err_console.print(line, highlight=False, markup=False, soft_wrap=True)

    shown = RichProgress() if sys.stderr.isatty() or os.environ.get("CURATE_PROGRESS") == "1" else LineProgress(to_stderr)
    return TeeProgress(shown, LineProgress(to_log))


class RichProgress:
    """A progress bar per stage (rows and rows/s)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=False,
        )
        self._task = None

    def start(self, description: str, total: int | None = None) -> None:
        import time

        self._bar.start()
        self._t0 = time.perf_counter()
        self._task = self._bar.add_task(description, total=total, rate="")

    def advance(self, n: int = 1) -> None:
        import time

        task = self._bar.tasks[-1]
        done = task.completed + n
        if done % 1000 < n or (task.total and done >= task.total):
            rate = done / max(time.perf_counter() - self._t0, 1e-9)
            self._bar.update(self._task, completed=done, rate=f"{rate:,.0f} rows/s")
        else:
            self._bar.update(self._task, completed=done)

    def finish(self) -> None:
        task = self._bar.tasks[-1]
        self._bar.update(self._task, total=task.completed, completed=task.completed)
        self._bar.stop()


def print_curation_funnel(dataset: str, funnel: dict, next_stages: list[str]) -> None:
    """The funnel of the stages that need no model, as soon as they finished (the model stages
    after them can take minutes), with the row accounting so far."""
    _funnel_tables(f"Curated: {dataset} (before {', '.join(next_stages)})", funnel)
    _accounting_line(funnel)
    console.print(f"Running {', '.join(next_stages)} next; the version is published when they finish.")


def _funnel_tables(title: str, f: dict) -> None:
    from curation.report.html import funnel_steps, reason_rows

    table = Table(title=title, show_header=True)
    table.add_column("step")
    table.add_column("count", justify="right")
    for label, n in funnel_steps(f):
        table.add_row(label, f"{'-' if n < 0 else ''}{abs(n):,}")
    console.print(table)
    reasons = reason_rows(f)
    if reasons:
        t = Table(title="Removed, by reason", show_header=True)
        for col in ("outcome", "stage", "reason"):
            t.add_column(col)
        t.add_column("count", justify="right")
        for o, s, r, n in reasons:
            t.add_row(o, s, r, f"{n:,}")
        console.print(t)


def print_funnel(result: dict) -> None:
    f = result["funnel"]
    _funnel_tables(f"Funnel: {result['dataset']} v{result['version']}", f)
    if "generated" in f:
        from curation.report.html import GENERATION_HEADER, generation_rows

        g = f["generated"]
        t = Table(
            title=f"Generation: {g['prompts']} prompts x {g['params']['n']} candidates ({g['backend'].get('model')})", show_header=True
        )
        for col in GENERATION_HEADER:
            t.add_column(col, justify="left" if col == "strategy" else "right")
        for row in generation_rows(g):
            t.add_row(*["" if v is None else f"{v:,}" if isinstance(v, int) else str(v) for v in row])
        console.print(t)
    if "labels" in f:
        print_labels(f["labels"])
    if "filter" in f:
        from curation.report.filters import STEP_HEADER, step_rows

        fc = f["filter"]
        console.print(_text_table("Filters (in order)", STEP_HEADER, step_rows(fc)))
        console.print(
            f"Filter accounting: {fc['pairs_in']:,} pairs in = {fc['filtered']:,} filtered + {fc['pairs_out']:,} published"
            f" ({fc['flipped']:,} flipped, {fc['routed']:,} routed to people)"
        )
    if f.get("evaluation", {}).get("rows"):
        print_evaluation(f["evaluation"])
    _accounting_line(f)


def print_evaluation(e: dict) -> None:
    from curation.report.evaluation import EVALUATION_HEADER, evaluation_rows

    title = f"Evaluation: {e['eval_pairs']:,} held-out human-labelled pairs ({e['leaked_excluded']:,} left out as leaked)"
    console.print(_text_table(title, EVALUATION_HEADER, evaluation_rows(e["rows"])))


def _accounting_line(f: dict) -> None:
    ok = (
        f["rows_in"] == f["rows_quarantined"] + f["rows_filtered"] + f["rows_with_pairs"]
        and f["pairs_out"] == f["pairs_quarantined"] + f["pairs_filtered"] + f["kept"]
    )
    console.print(
        f"Row accounting: {f['rows_in']:,} rows in = {f['rows_quarantined']:,} quarantined + {f['rows_filtered']:,} filtered"
        f" + {f['rows_with_pairs']:,} with pairs; {f['pairs_out']:,} pairs = {f['pairs_quarantined']:,} quarantined"
        f" + {f['pairs_filtered']:,} filtered + {f['kept']:,} kept [{'green' if ok else 'red'}]{'OK' if ok else 'MISMATCH'}[/]"
    )


def print_labels(labels: dict) -> None:
    from curation.report.labels import AGREEMENT_HEADER, AGREEMENT_NOTE, LABELER_HEADER, agreement_rows, labeler_rows

    console.print(_text_table("Labels", LABELER_HEADER, labeler_rows(labels)))
    if labels.get("agreement"):
        agreement = _text_table("Agreement with human labels (ties and invalid apart)", AGREEMENT_HEADER, agreement_rows(labels))
        agreement.caption = AGREEMENT_NOTE
        console.print(agreement)


def _text_table(title: str, header: list[str], rows: list[list]) -> Table:
    """A rich table of the report's (header, rows): the CLI prints what the HTML report shows."""
    table = Table(title=title, show_header=True)
    for i, col in enumerate(header):
        table.add_column(col, no_wrap=i < 2)  # names and kinds whole; the figures' headers wrap
    for row in rows:
        table.add_row(*[str(v) for v in row])
    return table


@app.command()
@friendly
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML (sources, adapters, validation, dataset name)."),
    data_root: str | None = DataRoot,
    local: bool = typer.Option(False, "--local", help="Run the stages in this process without Prefect."),
    force: bool = typer.Option(False, "--force", help="Publish a new version even if config and inputs are unchanged."),
    keep_staging: bool = typer.Option(False, "--keep-staging", help="Keep the run folder's staged Parquet files."),
    allow_empty: bool = typer.Option(
        False, "--allow-empty", help="Publish even when a source yields no kept pair (by default the run stops and says why)."
    ),
    catalog: str | None = typer.Option(
        None,
        "--catalog",
        help="file or postgres: where a new data root keeps its catalogs (the recipe's `catalog:`). postgres connects with "
        "CURATE_PG_DSN or the PG* variables; the root remembers the choice (catalog.json).",
    ),
) -> None:
    """Run a recipe: ingest -> validate -> dedup (-> generate -> label -> filter) -> publish a new dataset version.

    Prints the funnel and where the dataset and its report are. Runs as a Prefect flow (no
    server needed; with PREFECT_API_URL set, the run shows in that server's UI) on the task
    runner the recipe's orchestration section names, unless --local. Stages whose inputs and
    settings did not change since an earlier flow run are reused from the stage cache.
    """
    from dataclasses import asdict

    from curation.config import load_config

    cfg = load_config(recipe, data_root=data_root)  # fail on a bad recipe before anything starts
    cfg.allow_empty = cfg.allow_empty or allow_empty
    if catalog is not None or cfg.catalog is not None:
        from curation.store.catalog import DatasetStore

        DatasetStore(cfg.data_root, catalog=catalog or cfg.catalog).bind_catalog()
    progress = run_progress(cfg)

    def announce(funnel: dict, next_stages: list[str]) -> None:
        print_curation_funnel(cfg.publish.dataset, funnel, next_stages)

    if local:
        from curation.run.runner import curate

        result = asdict(curate(cfg, progress=progress, force=force, keep_staging=keep_staging, on_curated=announce))
    else:
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        from flows.curate import run_recipe, set_progress

        _one_line_curation_errors()
        set_progress(progress, announce)
        result = run_recipe(str(recipe), data_root=cfg.data_root, force=force, keep_staging=keep_staging, allow_empty=allow_empty)
        if result.get("cached"):
            err_console.print(f"reused from the stage cache: {', '.join(result['cached'])}")
    _print_run_result(result, cfg.data_root)


class _NoCurationTraceback(logging.Filter):
    """On the console, a CurationError that Prefect logs for a failed task or flow keeps its
    message and loses its traceback: the message says what to fix, and `friendly` prints it
    again as the command's error. The run's logs in the Prefect UI keep the traceback (the API
    handler sits on the run loggers and sees the record first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], CurationError):
            record.exc_info, record.exc_text = None, None
        return True


def _one_line_curation_errors() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _NoCurationTraceback) for f in handler.filters):
            handler.addFilter(_NoCurationTraceback())


CronOption = typer.Option(
    None, "--cron", help='Cron schedule, e.g. "0 3 * * *" (03:00 daily); repeat for several. None: runs only when triggered.'
)
TimezoneOption = typer.Option("UTC", "--timezone", help="IANA timezone of the cron schedules (e.g. Europe/Paris).")


@app.command()
@friendly
def serve(
    recipes: list[Path] = typer.Argument(..., help="Recipe YAML file(s); one deployment each, named after its dataset."),
    cron: list[str] | None = CronOption,
    timezone: str = TimezoneOption,
    name: str | None = typer.Option(None, "--name", help="Deployment name (one recipe only; default: the dataset name)."),
    limit: int | None = typer.Option(None, "--limit", help="At most this many runs at once in this process."),
    data_root: str | None = DataRoot,
) -> None:
    """Serve the recipes as scheduled Prefect deployments from this one long-running process.

    Registers a deployment of the flow `curate-recipe` per recipe with the Prefect server at
    PREFECT_API_URL (start one with `prefect server start`), then runs their scheduled runs
    and the ones you trigger, each in a subprocess, until Ctrl-C (which pauses the schedules).
    Trigger a run with `prefect deployment run 'curate-recipe/NAME'`. For runs started by
    workers of a work pool instead, see `curate deploy` and prefect.yaml.

        curate serve recipes/hh-rlhf-sample.yaml --cron "0 3 * * *"
    """
    from flows.deployments import require_server, serve_recipes

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    url = require_server("curate serve")
    err_console.print(f"serving {len(recipes)} deployment(s) of curate-recipe on {url} (Ctrl-C stops)")
    serve_recipes(recipes, cron=cron or [], timezone=timezone, name=name, data_root=data_root, limit=limit)


@app.command()
@friendly
def deploy(
    recipe: Path = typer.Argument(..., help="Recipe YAML file to deploy."),
    pool: str = typer.Option(..., "--pool", help="Work pool whose workers run it (e.g. a process pool)."),
    cron: list[str] | None = CronOption,
    timezone: str = TimezoneOption,
    name: str | None = typer.Option(None, "--name", help="Deployment name (default: the dataset name)."),
    data_root: str | None = DataRoot,
) -> None:
    """Register the recipe as a Prefect deployment on a work pool, with this checkout as its code.

    Needs a Prefect server (PREFECT_API_URL) and a work pool; on one machine a process pool:

        prefect work-pool create curation --type process
        curate deploy recipes/hh-rlhf-sample.yaml --pool curation --cron "0 3 * * *"
        prefect worker start --pool curation

    The repository's prefect.yaml declares the standard deployments for `prefect deploy --all`.
    """
    from flows.deployments import deploy_recipe

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    full_name, deployment_id = deploy_recipe(recipe, pool=pool, cron=cron or [], timezone=timezone, name=name, data_root=data_root)
    console.print(f"Deployed [bold]{full_name}[/] ({deployment_id}) on work pool {pool!r}")
    console.print(f"Run it now: prefect deployment run '{full_name}'\nWorkers:    prefect worker start --pool {pool}")


def _store_location(data_root: str, name: str) -> str:
    from curation.store.catalog import DatasetStore

    return DatasetStore(data_root).location(name)


def _print_run_result(result: dict, data_root: str) -> None:
    name, version = result["dataset"], result["version"]
    if result["unchanged"] and result.get("summary", {}).get("raced"):
        console.print(
            f"[bold]{name} v{version}[/] was published from this config and these inputs by a run that finished first: nothing to do."
        )
    elif result["unchanged"]:
        console.print(f"[bold]{name} v{version}[/] was built from this config and these inputs: nothing to do (use --force to republish).")
    else:
        print_funnel(result)
    console.print(f"Dataset: [bold]{name}@{version}[/] in {_store_location(data_root, name)}")
    console.print(f"Report:  {(Path(result['report_dir']) / 'report.html').resolve()}")
    console.print(
        f"Next:    curate sql 'SELECT label_source, count(*) FROM \"{name}\".pairs GROUP BY 1'\n"
        f"         curate export {name} --format trl --out exports/{name}"
    )
    if result.get("funnel", {}).get("filter", {}).get("routed"):
        console.print(f"         curate route export {name} --out queue/{name}   # the pairs routed to people, as annotation tasks")
    if result.get("funnel", {}).get("evaluation") and version > 1:
        console.print(
            f"         curate eval {name}@{version - 1} {name}@{version}   # this version against the last, on the same held-out pairs"
        )


@app.command()
@friendly
def check(
    recipe: Path = typer.Argument(..., help="Recipe YAML to check."),
    rows: int = typer.Option(100, "--rows", min=1, help="Rows of each source to try in a scratch folder (nothing is published)."),
    data_root: str | None = DataRoot,
) -> None:
    """Check a recipe without running it.

    Validates the config, the adapters, backends and labelers (no weights are loaded), opens
    every input, then runs the first --rows rows of each source through ingest, validate and
    dedup in a scratch folder and prints what each source would keep, with the top reasons
    for what it would not. A misspelt field name shows here as a source that keeps nothing.
    """
    from curation.config import load_config
    from curation.run.inputs import input_fingerprints
    from curation.run.preview import preview
    from curation.run.runner import check_stages

    cfg = load_config(recipe, data_root=data_root)
    check_stages(cfg)  # backends, models, servers, labeler configs: no weights are loaded
    fps = input_fingerprints(cfg)
    console.print(f"Recipe OK: dataset [bold]{cfg.publish.dataset}[/], config hash {cfg.config_hash()}")
    for fp in fps:
        console.print(f"  {fp['source']}: {fp.get('path') or fp.get('id')} ({fp.get('bytes', '?')} bytes)")
    if not cfg.sources:
        return
    table = Table(title=f"The first {rows:,} rows of each source", show_header=True)
    for col in ("source", "rows", "kept pairs", "filtered", "quarantined", "top reasons"):
        table.add_column(col, justify="left" if col in ("source", "top reasons") else "right")
    empty = []
    for name, s in preview(cfg, rows).items():
        why = "\n".join(f"{reason}: {n:,}" for reason, n in s["reasons"])
        table.add_row(name, f"{s['rows']:,}", f"{s['kept']:,}", f"{s['filtered']:,}", f"{s['quarantined']:,}", why)
        if not s["kept"]:
            empty.append(name)
    console.print(table)
    if empty and not cfg.allow_empty:
        err_console.print(
            f"[bold red]error:[/] {', '.join(map(repr, empty))} kept no pair in the first {rows:,} rows (reasons above); "
            "a run stops when a source keeps none (allow_empty: true publishes anyway)",
            highlight=False,
        )
        raise typer.Exit(1)


@app.command()
@friendly
def sql(
    query: str = typer.Argument(..., help='SQL over published datasets, e.g. "SELECT count(*) FROM pairs".'),
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Dataset behind bare `pairs`, `decisions`, `quarantine` (NAME or NAME@VERSION)."
    ),
    version: int | None = typer.Option(None, "--version", "-v", help="Version of that dataset (default: latest)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json | jsonl"),
    max_rows: int = typer.Option(40, "--max-rows", help="Rows to show in table format."),
    allow_external_reads: bool = typer.Option(
        False, "--allow-external-reads", help="Let the query read files of your own (to join them); it still cannot write anything."
    ),
    data_root: str | None = DataRoot,
) -> None:
    """Query published datasets with DuckDB SQL, read-only.

    Bare `pairs`, `decisions`, `quarantine` and `versions` are the default dataset (the only
    one, the most recent, or --dataset). Every dataset is also `NAME.pairs`, and a past
    version is `"NAME@2".pairs`. Example: why was a row dropped?

        curate sql "SELECT stage, reason, count(*) FROM decisions WHERE decision <> 'kept' GROUP BY ALL"

    Only statements that read run (SELECT, WITH, DESCRIBE, SUMMARIZE, SHOW, EXPLAIN); a
    published version never changes, so COPY, ATTACH, INSERT, CREATE, SET and the like are
    refused before anything runs, and a query reads only the datasets' own files.
    """
    import polars as pl

    from curation.store.query import sql as run_sql

    if dataset and "@" in dataset:
        dataset, version = parse_ref(dataset)
    df = run_sql(query, _root(data_root), dataset=dataset, version=version, allow_external_reads=allow_external_reads)
    if fmt == "table":
        with pl.Config(tbl_rows=max_rows, fmt_str_lengths=60, tbl_width_chars=200):
            console.print(str(df), highlight=False, markup=False)
        if df.height > max_rows:
            err_console.print(
                f"showing {max_rows} of {df.height:,} rows: --max-rows {df.height} shows them all, -f csv|json|jsonl writes them"
            )
    elif fmt == "csv":
        nested = [c for c, t in df.schema.items() if t.is_nested()]
        if nested:
            raise CurationError(f"csv cannot hold nested columns ({', '.join(nested)}); use --format json or select scalar columns")
        sys.stdout.write(df.write_csv())
    elif fmt == "json":
        sys.stdout.write(json.dumps(json_safe(df.to_dicts()), ensure_ascii=False, default=str, indent=1, allow_nan=False) + "\n")
    elif fmt == "jsonl":
        for row in df.iter_rows(named=True):
            sys.stdout.write(json.dumps(json_safe(row), ensure_ascii=False, default=str, allow_nan=False) + "\n")
    else:
        raise CurationError(f"unknown --format {fmt!r}: use table, csv, json or jsonl")


def json_safe(value: Any) -> Any:
    """JSON has no infinity or NaN (Python would print bare ``Infinity``/``NaN``, which JSON
    parsers reject): non-finite floats become the strings "Infinity", "-Infinity", "NaN"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@datasets_app.command("list")
@friendly
def datasets_list(data_root: str | None = DataRoot) -> None:
    """List datasets with their latest version and row counts."""
    from curation.store.catalog import DatasetStore

    store = DatasetStore(_root(data_root))
    names = store.datasets()
    if not names:
        console.print(f"No datasets in {store.root} yet. Publish one with: curate run RECIPE.yaml")
        return
    table = Table(show_header=True)
    for col in ("dataset", "versions", "latest", "created (UTC)", "pairs", "quarantine", "decisions", "config"):
        table.add_column(col)
    for name in names:
        versions = store.versions(name)
        v = versions[-1]
        table.add_row(
            name,
            str(len(versions)),
            f"v{v.version}",
            v.created_at[:19],
            *(f"{v.tables.get(t, 0):,}" for t in ("pairs", "quarantine", "decisions")),
            v.config_hash,
        )
    console.print(table)


def funnel_line(f: dict, published: int) -> str:
    """One line for a version: rows in -> pairs -> kept -> published, and every removal counted
    (at read/adapt, validate, dedup, generation and each filter step)."""
    generated = f.get("generated", {})
    filtered = (
        f["rows_filtered"] + f["pairs_filtered"] + sum(generated.get("filtered", {}).values()) + f.get("filter", {}).get("filtered", 0)
    )
    quarantined = f["rows_quarantined"] + f["pairs_quarantined"]
    steps = f"{f['rows_in']:,} rows in -> {f['pairs_out']:,} pairs -> {f['kept']:,} kept"
    if generated:
        steps += f" (+{generated.get('pairs_kept', 0):,} generated)"
    if "filter" in f:
        steps += f" -> {published:,} published"
    flipped = f.get("filter", {}).get("flipped", 0)
    return f"funnel: {steps} ({quarantined:,} quarantined, {filtered:,} filtered" + (f", {flipped:,} flipped)" if flipped else ")")


@datasets_app.command("show")
@friendly
def datasets_show(
    ref: str = typer.Argument(..., help="NAME or NAME@VERSION"),
    versions: bool = typer.Option(False, "--versions", help="List every version instead of one."),
    show_config: bool = typer.Option(False, "--config", help="Print the full recipe of that version."),
    data_root: str | None = DataRoot,
) -> None:
    """Show a version: lineage, config hash, code version, inputs, counts, schema."""
    import yaml

    from curation.store.catalog import DatasetStore

    store = DatasetStore(_root(data_root))
    name, version = parse_ref(ref)
    if versions:
        table = Table(show_header=True)
        for col in ("version", "created (UTC)", "parents", "pairs", "config", "code", "run"):
            table.add_column(col)
        for v in store.versions(name):
            table.add_row(
                f"v{v.version}",
                v.created_at[:19],
                ", ".join(v.parents),
                f"{v.tables.get('pairs', 0):,}",
                v.config_hash,
                v.code_version,
                v.run_id or "",
            )
        console.print(table)
        return
    v = store.version(name, version)
    console.print(f"[bold]{v.dataset}@{v.version}[/]  created {v.created_at}  snapshot {v.snapshot_id}")
    console.print(f"parents: {', '.join(v.parents) or 'none'}")
    console.print(f"config hash: {v.config_hash}   code: {v.code_version}   run: {v.run_id}")
    console.print("inputs:")
    for i in v.inputs:
        console.print(
            f"  {i.get('source')}: {i.get('path') or i.get('id')}  {i.get('bytes', '')} bytes  sha256 {str(i.get('sha256') or i.get('fingerprint'))[:16]}"
        )
    console.print("tables: " + ", ".join(f"{t} {n:,} rows" for t, n in v.tables.items()))
    f = v.counts
    if "rows_in" in f:
        console.print(funnel_line(f, v.tables.get("pairs", 0)))
    report = Path(_root(data_root)) / "datasets" / name / "reports" / f"v{v.version}" / "report.html"
    if report.exists():
        console.print(f"report: {report.resolve()}")
    if show_config:
        console.print(yaml.safe_dump(v.config, sort_keys=False), highlight=False, markup=False)


@datasets_app.command("verify")
@friendly
def datasets_verify(
    ref: str = typer.Argument(..., help="NAME or NAME@VERSION (latest by default)"), data_root: str | None = DataRoot
) -> None:
    """Check that a version's data files are the ones it was published with.

    The sha256 and size of every data file are recorded with the version when it is published;
    this recomputes them and names every file that changed or is missing (exit status 1).
    Published data files are read-only, and curate sql cannot write, so a problem here means
    something outside curate touched them.
    """
    from curation.store.catalog import DatasetStore

    name, version = parse_ref(ref)
    result = DatasetStore(_root(data_root)).verify(name, version)
    if not result["recorded"]:
        raise CurationError(f"{result['ref']} was published before checksums were recorded; nothing to compare with")
    for problem in result["problems"]:
        err_console.print(f"[bold red]{escape(problem)}[/]", highlight=False, soft_wrap=True)
    if result["problems"]:
        err_console.print(f"{result['ref']}: {len(result['problems'])} of {result['files']} data files differ from the published ones")
        raise typer.Exit(1)
    console.print(f"{result['ref']}: all {result['files']:,} data files ({_megabytes(result['bytes'])}) are as published.")


@datasets_app.command("diff")
@friendly
def datasets_diff(
    name: str = typer.Argument(..., help="Dataset name."),
    a: int = typer.Argument(..., help="Older version."),
    b: int = typer.Argument(..., help="Newer version."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole comparison as JSON (for scripts)."),
    data_root: str | None = DataRoot,
) -> None:
    """Compare two versions: what changed in the recipe (only the keys that changed), in the
    inputs and the code, the tables whose row counts changed, and the pairs added and removed."""
    from curation.store.catalog import DatasetStore

    d = DatasetStore(_root(data_root)).diff(name, a, b)
    if as_json:
        sys.stdout.write(json.dumps(d, default=str, indent=1) + "\n")
        return
    for line in diff_lines(d):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def diff_lines(d: dict) -> list[str]:
    """The comparison as a person reads it: only what changed, one line each."""

    def short(value: object) -> str:
        text = json.dumps(value, default=str, ensure_ascii=False)
        return text if len(text) <= 80 else text[:77] + "..."

    lines = [f"{d['dataset']}: v{d['a']} -> v{d['b']}"]
    config = d.get("config") or {}
    if config:
        lines.append(f"recipe: {len(config)} key(s) changed")
        for key, change in config.items():
            old, new = (short(change[k]) if k in change else "(absent)" for k in ("old", "new"))
            lines.append(f"  {key}: {old} -> {new}")
    else:
        lines.append("recipe: unchanged")
    lines.append("inputs: changed" if d.get("inputs_changed") else "inputs: unchanged")
    if d.get("code_version_changed"):
        lines.append("code version: changed")
    changed = {t: c for t, c in d.get("tables", {}).items() if c["a"] != c["b"]}
    for table, c in changed.items():
        before, after = ("-" if c[k] is None else f"{c[k]:,}" for k in ("a", "b"))
        lines.append(f"table {table}: {before} -> {after} rows")
    if not changed:
        lines.append("tables: same row counts")
    pairs = d.get("pairs")
    if pairs:
        lines.append(f"pairs: {pairs['added']:,} added, {pairs['removed']:,} removed (by pair id)")
        for kind in ("added", "removed"):
            if pairs[f"{kind}_examples"]:
                lines.append(f"  {kind}, e.g.: {', '.join(pairs[f'{kind}_examples'][:5])}")
    return lines


@app.command()
@friendly
def export(
    ref: str = typer.Argument(..., help="NAME or NAME@VERSION to export."),
    fmt: str = typer.Option("trl", "--format", help="Export format (trl: TRL DPO preference format)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    style: str = typer.Option("conversational", "--style", help="conversational (lists of messages) | standard (strings)."),
    files: str = typer.Option("parquet,jsonl,hf", "--files", help="Comma-separated: parquet, jsonl, hf (datasets.DatasetDict)."),
    test_size: float = typer.Option(0.1, "--test-size", help="Fraction of pairs in the test split."),
    seed: int = typer.Option(0, "--seed", help="Split seed (same seed, same split)."),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help="Chat-template tokenizer for --style standard: 'smollm2' or a local HF folder."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
    no_card: bool = typer.Option(False, "--no-card", help="Do not write README.md (the Hugging Face dataset card)."),
    licence: str | None = typer.Option(
        None, "--license", help="Licence id for the card (default: what the recipe's sources declare, else 'other')."
    ),
    push_to_hub: str | None = typer.Option(None, "--push-to-hub", metavar="REPO", help="Then upload the folder to this Hub dataset repo."),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repo private."),
    data_root: str | None = DataRoot,
) -> None:
    """Export a dataset version as DPO-ready files (TRL format, seeded train/test split), with a
    Hugging Face dataset card (README.md: the recipe, funnel, agreement, decontamination and
    evaluations of the version), and optionally push the folder to the Hub."""
    from curation.export.trl import export_trl
    from curation.store.catalog import DatasetStore

    if fmt != "trl":
        raise CurationError(f"unknown export format {fmt!r}; supported: trl")
    name, version = parse_ref(ref)
    store = DatasetStore(_root(data_root))
    info = store.version(name, version)
    tok = None
    if tokenizer == "smollm2":
        from curation.models.tokenizers import smollm2_tokenizer

        tok = smollm2_tokenizer()
    elif tokenizer:
        from transformers import AutoTokenizer

        if not Path(tokenizer).is_dir():
            raise CurationError(f"tokenizer folder not found: {tokenizer} (use 'smollm2' or a local HF model folder)")
        tok = AutoTokenizer.from_pretrained(tokenizer)
    result = export_trl(
        store.scan(name, "pairs", version=info.version),
        out,
        style=style,
        formats=[f.strip() for f in files.split(",") if f.strip()],
        test_size=test_size,
        seed=seed,
        chat_template_tokenizer=tok,
        overwrite=overwrite,
        info={"dataset": name, "version": info.version, "config_hash": info.config_hash},
    )
    console.print(f"Exported {name}@{info.version} ({style}): " + ", ".join(f"{k} {v:,}" for k, v in result.counts.items()))
    if result.skipped_unlabeled:
        console.print(f"Skipped {result.skipped_unlabeled:,} unlabeled (generated) pairs: label them before training on them.")
    for f in result.files:
        console.print(f"  {f}")
    if not no_card:
        from curation.export.card import write_card

        console.print(f"Dataset card: {write_card(store, info, result, licence=licence)}")
    if push_to_hub:
        from curation.export.hub import push

        console.print(f"Pushed to the Hub dataset {push_to_hub}: {push(out, push_to_hub, private)}")


@route_app.command("export")
@friendly
def route_export(
    ref: str = typer.Argument(..., help="NAME or NAME@VERSION whose routed pairs to export."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the task files."),
    formats: str = typer.Option(
        "label_studio,argilla,parquet,csv", "--format", help="Comma-separated: label_studio, argilla, parquet, csv."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds which response each task shows as A (position bias)."),
    data_root: str | None = DataRoot,
) -> None:
    """Write the routed pairs as annotation tasks (Label Studio, Argilla, Parquet/CSV queue).

    Which response is shown as A is drawn per pair; the tasks record it, so the completed file
    maps back to the pair. Then: curate route import NAME COMPLETED_FILE.
    """
    from curation.human.tasks import FORMATS, export_queue
    from curation.run.human_export import routed_pairs

    name, version = parse_ref(ref)
    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    unknown = sorted(set(wanted) - set(FORMATS))
    if unknown:
        raise CurationError(f"unknown --format {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    routed = routed_pairs(_root(data_root), name, version)
    written = export_queue(routed.queue, out, wanted, seed)
    console.print(f"{routed.queue.height:,} routed pairs of {routed.info.ref} ({routed.gone:,} no longer in the pairs table):")
    for kind, path in written.items():
        console.print(f"  {kind}: {path}")
    console.print(f"Then: curate route import {name} COMPLETED_FILE")


@route_app.command("import")
@friendly
def route_import(
    name: str = typer.Argument(..., help="Dataset the labels belong to."),
    files: list[Path] = typer.Argument(..., help="Completed labels: Label Studio JSON export, Argilla records, or CSV/Parquet/JSONL."),
    data_root: str | None = DataRoot,
) -> None:
    """Merge completed human labels into a new version (no model reruns).

    Each pair takes its annotators' majority: agree -> label_source human; prefer the other
    response -> chosen and rejected swapped (new pair id); tie -> dropped. The files are kept in
    the dataset's inbox, so later runs of the recipe merge them too. Importing the same file
    again changes nothing.
    """
    from curation.run.human_import import import_labels

    result = import_labels(_root(data_root), name, [str(f) for f in files])
    _print_import(name, result)


def _print_import(name: str, result: dict) -> None:
    if result["unchanged"]:
        console.print(f"{name}@{result['version']} already has these labels: nothing to do.")
        return
    console.print(
        f"{name}@{result['version']}: {result['answers']:,} answers on {result['pairs_labelled']:,} pairs -> "
        f"{result['kept']:,} confirmed, {result['flipped']:,} flipped, {result['filtered']:,} dropped as ties"
        f" ({result['already_applied']:,} already applied, {result['unknown_pairs']:,} unknown pairs)"
    )


@route_app.command("push")
@friendly
def route_push(
    ref: str = typer.Argument(..., help="NAME or NAME@VERSION whose routed pairs to send."),
    project: str | None = typer.Option(None, "--project", help="Label Studio project title (default: 'curate: NAME')."),
    seed: int = typer.Option(0, "--seed", help="Seeds which response each task shows as A (position bias)."),
    data_root: str | None = DataRoot,
) -> None:
    """Send the routed pairs to a Label Studio project (made with the product's labeling config
    if missing); pairs already in it are not sent again.

    The server and key come from LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (a legacy token or a
    personal access token); neither is stored anywhere. Then: curate route pull NAME.
    """
    from curation.run.human_export import push_to_label_studio

    name, version = parse_ref(ref)
    r = push_to_label_studio(_root(data_root), name, version, title=project, seed=seed)
    made = "made" if r["created"] else "found"
    console.print(
        f"{r['routed']:,} routed pairs of {r['ref']} -> Label Studio project {r['project']} ({r['title']!r}, {made}): "
        f"{r['imported']:,} tasks imported, {r['already']:,} already there"
    )
    console.print(f"Annotate: {r['url']}")
    console.print(f"Then: curate route pull {name}" + (f" --project {r['title']!r}" if project else ""))


@route_app.command("pull")
@friendly
def route_pull(
    name: str = typer.Argument(..., help="Dataset the labels belong to."),
    project: str | None = typer.Option(None, "--project", help="Label Studio project title (default: 'curate: NAME')."),
    data_root: str | None = DataRoot,
) -> None:
    """Fetch the project's annotations with Label Studio's export API and merge them into a new
    version, as curate route import does with a file (pulling again changes nothing)."""
    from curation.run.human_import import pull_from_label_studio

    result = pull_from_label_studio(_root(data_root), name, project or f"curate: {name}")
    _print_import(name, result)


@app.command()
@friendly
def report(
    ref: str = typer.Argument(..., help="NAME or NAME@VERSION (latest version by default)"),
    data_root: str | None = DataRoot,
    no_open: bool = typer.Option(False, "--no-open", help="Only print the report's path; do not open a browser."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Write the report again from the version's summary first."),
) -> None:
    """Open a version's self-contained HTML report (funnel, timings, histograms, agreement).

    Prints the report's path on the first line; opens it in a browser when this terminal has
    one (a desktop session or $BROWSER), never on a server or in a pipe.
    """
    from curation.report.open import find_report, open_in_browser

    name, version = parse_ref(ref)
    path = find_report(_root(data_root), name, version, rebuild=rebuild).resolve()
    print(path)
    if not no_open and open_in_browser(path):
        err_console.print("opened in your browser")


@app.command(name="eval")
@friendly
def eval_(
    targets: list[str] = typer.Argument(..., help="Versions to compare (NAME@V ...), or with --ablate one recipe."),
    eval_set: str | None = typer.Option(
        None,
        "--set",
        help="What to measure on: a recipe (its evaluate.sources) or a data file (with --adapter). "
        "Default: the first version's own held-out evaluation pairs.",
    ),
    adapter: str | None = typer.Option(None, "--adapter", help="Adapter of a --set data file (hh_rlhf, trl, rated, shp, oasst, mapping)."),
    trainer: list[str] | None = typer.Option(None, "--trainer", help="bt_embed (default), reward_model, dpo; repeat for several."),
    seeds: str | None = typer.Option(None, "--seeds", help="Seeds per trainer, e.g. 0,1,2 (default: the recipe's, or 0)."),
    ablate: bool = typer.Option(False, "--ablate", help="Measure the recipe's filter steps: none, all, and each one left out."),
    local: bool = typer.Option(False, "--local", help="With --ablate: run the stages in this process, without Prefect's stage cache."),
    data_root: str | None = DataRoot,
) -> None:
    """Prove the curation: train proxy models on dataset versions and measure them on human preferences they never saw.

    Every variant is measured on the same human-labelled pairs (leaked prompts left out of
    all), beside the baselines "random", "longer wins" and "shorter wins"; each variant's
    difference to the first comes with a paired 95% interval.

        curate eval hh-harmless@1 hh-harmless@3
        curate eval hh-harmless@2 hh-harmless@3 --set recipes/eval.yaml --trainer bt_embed --trainer reward_model
        curate eval recipes/hh-rlhf-sample.yaml --ablate

    A killed evaluation resumes from its last finished variant. The results go to the
    dataset's evaluation log (`curate sql "SELECT * FROM evaluation_log"`).
    """
    from curation.run.evaluation import evaluation_set, run_evaluation, settings, version_variants, write_log

    if ablate:
        if len(targets) != 1 or not targets[0].endswith((".yaml", ".yml")):
            raise CurationError("--ablate takes one recipe: curate eval RECIPE.yaml --ablate")
        from curation.config import load_config
        from flows.ablate import ablate_recipe
        from flows.curate import set_progress

        progress = run_progress(load_config(targets[0], data_root=data_root))
        set_progress(progress)
        result = ablate_recipe(
            targets[0], data_root=data_root, eval_set=eval_set, adapter=adapter, trainers=trainer, seeds=seeds, local=local,
            progress=progress, say=lambda line: err_console.print(line, highlight=False, markup=False),
        )  # fmt: skip
        print_ablation(result)
        return
    refs = [parse_ref(t) for t in targets]
    variants = version_variants(_root(data_root), refs)
    pairs, described, section = evaluation_set(eval_set, adapter, variants[0], _root(data_root))
    cfg = settings(section, trainer, seeds)
    work_root = _work_root(data_root)
    progress = run_progress_for(refs[0][0], work_root)
    eid, rows, _ = run_evaluation(
        refs[0][0], variants, pairs, described, cfg, work_root=work_root, progress=progress,
        on_variant=lambda name, resumed: err_console.print(f"{name}: {'taken from the earlier run' if resumed else 'training'}"),
    )  # fmt: skip
    write_log(_root(data_root), refs[0][0], eid, rows)
    print_evaluation({"rows": rows, "eval_pairs": rows[0]["eval_pairs"], "leaked_excluded": rows[0]["leaked_excluded"]})
    console.print(
        f"Evaluation {eid} in the evaluation log of {refs[0][0]}: curate sql \"SELECT * FROM evaluation_log WHERE evaluation_id = '{eid}'\""
    )
    _rewrite_reports(_root(data_root), refs[0][0], [v.version for (name, _), v in zip(refs, variants) if name == refs[0][0]])


def _rewrite_reports(data_root: str, dataset: str, versions: list[int | None]) -> None:
    """Each measured version's report gains the evaluation (the log is written: a report that
    cannot be rewritten is said, not an error; ``curate report --rebuild`` tries again)."""
    from curation.report.open import rewrite_report
    from curation.store.catalog import DatasetStore

    store = DatasetStore(data_root)
    for version in dict.fromkeys(v for v in versions if v is not None):
        try:
            path = rewrite_report(store, data_root, store.version(dataset, version))
        except (CurationError, OSError) as err:
            err_console.print(
                f"the report of {dataset}@{version} was not updated ({err}); later: curate report {dataset}@{version} --rebuild"
            )
        else:
            err_console.print(f"report of {dataset}@{version} updated: {path}", highlight=False)


def run_progress_for(dataset: str, work_root: str) -> Progress:
    from types import SimpleNamespace

    return run_progress(SimpleNamespace(work_root=work_root, publish=SimpleNamespace(dataset=dataset)))


def _work_root(data_root: str | None) -> str:
    """Where trainers keep their work and resume points: the data root if it is a local folder, else ./data."""
    from curation.config import is_url

    root = _root(data_root)
    return "data" if is_url(root) else root


def print_ablation(result: dict) -> None:
    print_evaluation(
        {"rows": result["rows"], "eval_pairs": result["rows"][0]["eval_pairs"], "leaked_excluded": result["rows"][0]["leaked_excluded"]}
    )
    console.print("What each filter step contributes (all steps minus the step left out; paired 95% interval):")
    for line in result["contributions"]:
        console.print(f"  {line}", highlight=False, markup=False)
    console.print(f"Evaluation {result['evaluation_id']} in the evaluation log of {result['dataset']}.")


@app.command()
@friendly
def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    work_dir: str | None = typer.Option(None, "--work-dir", help="Local work folder of an object-store data root (default ./data)."),
    data_root: str | None = DataRoot,
) -> None:
    """Remove what killed or crashed runs left behind, with sizes.

    The folders of runs whose process is gone, the staged files of publishes killed before
    their commit, half-built stage-cache entries, and cache entries the cache's own policy has
    evicted. Published versions are never touched. Every run does this for its own dataset
    when it starts; this does it for every dataset under the data root.
    """
    from curate.gc import collect

    found = collect(_root(data_root), work_dir, dry_run=dry_run)
    if not found:
        console.print("Nothing to clean up.")
        return
    table = Table(title="Would remove" if dry_run else "Removed", show_header=True)
    for col in ("what", "path", "size"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for what, path, size in found:
        table.add_row(what, path, _megabytes(size))
    console.print(table)
    total = sum(size for _, _, size in found)
    console.print(f"{'Would free' if dry_run else 'Freed'} {_megabytes(total)} in {len(found):,} item(s).")


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.1f} kB"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":
    main()
