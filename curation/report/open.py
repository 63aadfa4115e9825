"""``curate report NAME[@VERSION]``: find a version's report, rebuild it on request, open it.

Reports sit next to the version (``ROOT/datasets/NAME/reports/vN/report.html``; for an
object-store root the command downloads them to a temporary folder first). A browser is
opened only when one can show a page here: a terminal on a desktop (``DISPLAY`` /
``WAYLAND_DISPLAY``, macOS, Windows) or an explicit ``$BROWSER``. On a server, in CI or in a
pipe the command just prints the path, so it never blocks on a text-mode browser.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from curation.config import is_url
from curation.errors import CurationError

if TYPE_CHECKING:
    from curation.store.catalog import DatasetStore, VersionInfo


def local_dir(data_root: str | Path, dataset: str, version: int) -> Path:
    """Where the report is read and rebuilt here: beside the version for a local root, a
    temporary folder for an object-store root (the store keeps the copy that counts)."""
    if is_url(str(data_root)):
        return Path(tempfile.gettempdir()) / "curate-reports" / dataset / f"v{version}"
    return Path(data_root) / "datasets" / dataset / "reports" / f"v{version}"


def report_folder(store: DatasetStore, data_root: str | Path, info: VersionInfo) -> Path:
    """The local folder of a version's report files (downloaded from an object-store root)."""
    here = local_dir(data_root, info.dataset, info.version)
    return store.get_files(info.dataset, f"reports/v{info.version}", here) or here


def find_report(data_root: str | Path, dataset: str, version: int | None = None, *, rebuild: bool = False) -> Path:
    """The local path of ``dataset@version``'s report (latest by default), downloaded first
    from an object-store root. ``rebuild`` writes it again first (``rewrite_report``): for a
    report deleted by hand or written by an older ``curate``. Unknown names and versions raise
    the store's error, which lists what exists."""
    from curation.store.catalog import DatasetStore

    store = DatasetStore(data_root)
    info = store.version(dataset, version)
    if rebuild:
        return rewrite_report(store, data_root, info)
    sub = f"reports/v{info.version}"
    folder = report_folder(store, data_root, info)
    path = folder / "report.html"
    if not path.exists():
        raise CurationError(
            f"no report for {info.ref} in {store.location(dataset)}/{sub}; write it with: curate report {info.ref} --rebuild"
        )
    return path


def rewrite_report(store: DatasetStore, data_root: str | Path, info: VersionInfo) -> Path:
    """Write ``info``'s report again from its ``summary.json`` (or, without one, from the
    version's metadata, with no timings), with every ``curate eval`` of the version in the
    dataset's evaluation log, and store it beside the version; its local path. Only the report
    changes: the version's tables and metadata never do."""
    from curation.report.html import write_report
    from curation.report.summary import version_summary
    from curation.store.query import evaluations_of

    folder = report_folder(store, data_root, info)
    saved = folder / "summary.json"
    summary = json.loads(saved.read_text()) if saved.exists() else version_summary(info, data_root, info.run_id, info.counts, {})
    summary["later_evaluations"] = evaluations_of(store, info.dataset, info.version)
    write_report(summary, folder)
    store.put_files(info.dataset, f"reports/v{info.version}", folder)
    return folder / "report.html"


def browser_available() -> bool:
    """Whether opening a browser would show the page to the person at this terminal."""
    if not sys.stdout.isatty():
        return False
    if os.environ.get("BROWSER"):
        return True
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_in_browser(path: Path) -> bool:
    """Open ``path`` in the default browser when one is available; True when it was."""
    if not browser_available():
        return False
    import webbrowser

    try:
        return webbrowser.open(path.resolve().as_uri())
    except webbrowser.Error:
        return False
