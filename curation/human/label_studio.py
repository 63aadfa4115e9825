"""Label Studio over its REST API: the routed pairs go to a project as tasks, the annotations
come back as Label Studio's own JSON export, so a team never moves files by hand.

The server and the key come from the environment, with the names Label Studio's SDK uses:
``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``. Neither is ever written to a file, a
version's record or a message. A legacy token is sent as ``Authorization: Token KEY``; a
personal access token (a JWT refresh token) is first exchanged at ``/api/token/refresh/`` for
a short-lived access token, sent as ``Bearer``.

Pushing is idempotent: the project is found by its title (made, with the product's labeling
config, when missing; Label Studio validates the XML) and only tasks whose ``pair_id`` is not
in it yet are imported. A new project's Data Manager tab hides ``a_is`` and ``pair_id``
(``HIDDEN``): Label Studio lists every data key as a column, and ``a_is`` names which
response the stored data calls chosen. Pulling asks Label Studio's export API for the project's tasks with
their annotations (``exportType=JSON``), which ``curation.human.completed`` reads like a
file exported by hand.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

from curation.errors import CurationError

ENV_URL = "LABEL_STUDIO_URL"
ENV_KEY = "LABEL_STUDIO_API_KEY"
PAGE = 500
# Task data the labeling config never shows, hidden from the Data Manager's table too: which
# response is A (it would tell an annotator which one the data calls chosen) and the pair id.
HIDDEN = ("a_is", "pair_id")


class LabelStudio:
    """A small client for the endpoints the human loop needs."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout_s: float = 120.0):
        url = url or os.environ.get(ENV_URL, "")
        key = key or os.environ.get(ENV_KEY, "")
        if not url or not key:
            missing = " and ".join(n for n, v in ((ENV_URL, url), (ENV_KEY, key)) if not v)
            raise CurationError(
                f"set {missing} to reach Label Studio (its URL, e.g. http://localhost:8080, and an access token from "
                "Account & Settings); or move files by hand with curate route export / import"
            )
        self.url = url.rstrip("/")
        self._key = key
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, follow_redirects=True)
        self._auth = self._authorization()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _authorization(self) -> str:
        if self._key.count(".") != 2:  # a legacy token
            return f"Token {self._key}"
        got = self._call("POST", "/api/token/refresh/", json={"refresh": self._key}, auth=False)
        return f"Bearer {got['access']}"

    def _call(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        """One request; any failure is one line naming the server and what was asked."""
        headers = {"Authorization": self._auth} if auth else {}
        try:
            r = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as err:
            raise CurationError(f"Label Studio at {self.url} cannot be reached ({type(err).__name__}: {err}); is it running?") from None
        if r.status_code in (401, 403):
            raise CurationError(f"Label Studio at {self.url} refused the key in ${ENV_KEY} (HTTP {r.status_code})")
        if r.status_code >= 400:
            detail = " ".join(r.text.split())[:400].replace(self._key, "***")
            raise CurationError(f"Label Studio at {self.url}: {method} {path.split('?')[0]} failed (HTTP {r.status_code}): {detail}")
        return r.json() if r.content else None

    # -- projects and tasks ----------------------------------------------------------------
    def find_project(self, title: str) -> dict | None:
        page = 1
        while True:
            got = self._call("GET", "/api/projects/", params={"page": page, "page_size": 100, "title": title})
            items = got["results"] if isinstance(got, dict) else got
            for p in items:
                if p.get("title") == title:
                    return p
            if not isinstance(got, dict) or not got.get("next"):
                return None
            page += 1

    def create_project(self, title: str, label_config: str, description: str = "") -> dict:
        return self._call("POST", "/api/projects/", json={"title": title, "label_config": label_config, "description": description})

    def task_pair_ids(self, project: int) -> set[str]:
        """The ``pair_id`` of every task in the project."""
        ids: set[str] = set()
        page = 1
        while True:
            got = self._call("GET", "/api/tasks/", params={"project": project, "page": page, "page_size": PAGE, "fields": "all"})
            tasks = got.get("tasks", []) if isinstance(got, dict) else got
            ids |= {t["data"].get("pair_id") for t in tasks if isinstance(t.get("data"), dict)}
            if len(tasks) < PAGE:
                return ids - {None}
            page += 1

    def import_tasks(self, project: int, tasks: list[dict]) -> int:
        if not tasks:
            return 0
        return int(self._call("POST", f"/api/projects/{project}/import", json=tasks)["task_count"])

    def export(self, project: int) -> list[dict]:
        """Every task of the project with its annotations: Label Studio's JSON export."""
        return self._call("GET", f"/api/projects/{project}/export", params={"exportType": "JSON"})

    def views(self, project: int) -> list[dict]:
        """The project's Data Manager tabs (none until someone opens the project or we make one)."""
        return self._call("GET", "/api/dm/views/", params={"project": project})

    def hide_columns(self, project: int, keys: tuple[str, ...], title: str = "Default") -> None:
        """A Data Manager tab for the project with these task data keys hidden, beside what
        Label Studio hides by default (its columns' ``visibility_defaults``): the table every
        member of the project opens first would otherwise list them."""
        columns = self._call("GET", "/api/dm/columns/", params={"project": project})["columns"]
        hidden: dict[str, list[str]] = {"explore": [], "labeling": []}
        for c in columns:
            key = f"tasks:{c['parent']}.{c['id']}" if c.get("parent") else f"tasks:{c['id']}"
            for mode, shown in (c.get("visibility_defaults") or {}).items():
                if mode in hidden and not shown:
                    hidden[mode].append(key)
        for mode in hidden:
            hidden[mode] = sorted(set(hidden[mode]) | {f"tasks:data.{k}" for k in keys})
        self._call("POST", "/api/dm/views/", json={"project": project, "data": {"title": title, "hiddenColumns": hidden}})

    def project_url(self, project: int) -> str:
        return f"{self.url}/projects/{project}/data"


def push_tasks(client: LabelStudio, title: str, label_config: str, tasks: list[dict], description: str = "") -> dict[str, Any]:
    """The tasks not in the project yet, imported (the project made first if missing)."""
    project = client.find_project(title)
    created = project is None
    if project is None:
        project = client.create_project(title, label_config, description)
    have = set() if created else client.task_pair_ids(project["id"])
    new = [{"data": t["data"]} for t in tasks if t["data"]["pair_id"] not in have]
    imported = client.import_tasks(project["id"], new)
    if not client.views(project["id"]):  # a new project (or one whose first push was cut short)
        client.hide_columns(project["id"], HIDDEN)
    return {"project": project["id"], "created": created, "imported": imported, "already": len(tasks) - len(new)}


def export_json(client: LabelStudio, project: int) -> bytes:
    """The project's export in a stable form (tasks by id, keys sorted): pulling the same
    annotations twice gives the same bytes, so the inbox keeps one file."""
    tasks = sorted(client.export(project), key=lambda t: t.get("id", 0))
    return json.dumps(tasks, sort_keys=True, ensure_ascii=False, indent=1).encode()
