"""Deployments of the curation flow: `curate serve` (one long-running process) and
`curate deploy` (a work pool's workers run it), both on ``curate_recipe_flow``.

They follow Prefect's two conventions for running flows on a schedule:

* ``serve`` (Prefect's ``serve()`` over ``flow.to_deployment``): one process registers the
  deployments with the Prefect server, and runs their scheduled and manual runs as
  subprocesses of itself. Nothing else to start; it suits a single machine.
* ``deploy`` (``flow.from_source(...).deploy``): the deployment is registered on a work pool,
  and a worker (``prefect worker start --pool NAME``) starts each run. With a ``process``
  pool and this checkout as the code's source, a worker on this machine runs it; the
  repository's ``prefect.yaml`` declares the same deployments for ``prefect deploy``.

Both need a Prefect server: the ephemeral API that `curate run` starts for itself has no
scheduler and ends with the process. Every deployment passes an absolute recipe path (and
data root, when given) as parameters, so a run does not depend on the runner's working folder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from curation.config import is_url, load_config
from curation.errors import ConfigError, CurationError

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/curate.py:curate_recipe_flow"
SERVER_HINT = (
    "start one with `prefect server start` and point at it with "
    "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` (or export PREFECT_API_URL)"
)


def require_server(what: str) -> str:
    """The configured Prefect API URL; without one, a clear error (schedules need a server)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise CurationError(f"{what} needs a Prefect server (PREFECT_API_URL is not set): {SERVER_HINT}")
    return url


def schedules(cron: list[str], timezone: str) -> list[Any]:
    """Prefect cron schedules, each checked here so a typo fails with the bad expression named."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Cron
    from pydantic import ValidationError

    out = []
    for expr in cron:
        try:
            CronSchedule(cron=expr, timezone=timezone)
        except ValidationError as err:
            reason = "; ".join(e["msg"] for e in err.errors())
            raise ConfigError(f"invalid cron schedule {expr!r} (timezone {timezone!r}): {reason}") from None
        out.append(Cron(expr, timezone=timezone))
    return out


def parameters(recipe: str | Path, data_root: str | None) -> tuple[str, dict[str, Any]]:
    """(dataset name, flow parameters) for a recipe; loads it, so a bad recipe fails now."""
    cfg = load_config(recipe, data_root=data_root)
    root = None if data_root is None else data_root if is_url(data_root) else str(Path(data_root).resolve())
    return cfg.publish.dataset, {"recipe": str(Path(recipe).resolve()), "data_root": root}


def _names(recipes: list[Path], name: str | None) -> list[str | None]:
    if name is not None and len(recipes) > 1:
        raise CurationError("--name names one deployment: give one recipe with it, or leave it out (each is named after its dataset)")
    if name is not None and (bad := sorted(set(name) & set("/%&><"))):
        raise CurationError(f"deployment name {name!r} contains {' '.join(bad)}; Prefect names cannot contain / % & > <")
    return [name] * len(recipes)


def recipe_deployments(
    recipes: list[Path], *, cron: list[str], timezone: str = "UTC", name: str | None = None, data_root: str | None = None
) -> list[Any]:
    """One runner deployment of ``curate_recipe_flow`` per recipe, named after its dataset."""
    from prefect.deployments.runner import EntrypointType

    from flows.curate import curate_recipe_flow

    out = []
    for recipe, given in zip(recipes, _names(recipes, name)):
        dataset, params = parameters(recipe, data_root)
        out.append(
            curate_recipe_flow.to_deployment(
                name=given or dataset,
                schedules=schedules(cron, timezone),
                parameters=params,
                tags=["curation", dataset],
                description=f"Curate {params['recipe']} into the dataset {dataset!r}",
                entrypoint_type=EntrypointType.MODULE_PATH,  # importable wherever the package is installed
            )
        )
    return out


def serve_recipes(recipes: list[Path], *, limit: int | None = None, **kwargs: Any) -> None:
    """Register the deployments and run their runs until interrupted (Prefect's ``serve``)."""
    from prefect import serve

    require_server("curate serve")
    deployments = recipe_deployments(recipes, **kwargs)
    try:
        serve(*deployments, limit=limit)
    finally:
        pause_served(deployments)


def pause_served(deployments: list[Any]) -> None:
    """Pause the served deployments' schedules once ``serve`` has stopped (Ctrl-C, SIGTERM).

    Prefect's runner pauses them while its event loop shuts down, and under load that step
    can lose the race with the loop's teardown, leaving a schedule running with nobody to
    serve it; pausing again here is idempotent and runs after the loop has gone."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for deployment in deployments:
            try:
                client.pause_deployment(client.read_deployment_by_name(deployment.full_name).id)
            except ObjectNotFound:  # never registered: serve failed before it got there
                continue
            except httpx.HTTPError as err:  # the server went first: nothing can be paused, say so
                print(f"could not pause the schedules of {deployment.full_name}: {err}", file=sys.stderr)


def deploy_recipe(
    recipe: Path, *, pool: str, cron: list[str], timezone: str = "UTC", name: str | None = None, data_root: str | None = None
) -> tuple[str, Any]:
    """Register a deployment of ``curate_recipe_flow`` on a work pool, with this checkout as
    the flow's source. Returns (the deployment's full name, its id)."""
    from prefect import flow

    require_server("curate deploy")
    _names([recipe], name)
    dataset, params = parameters(recipe, data_root)
    planned = schedules(cron, timezone)
    _require_pool(pool)
    source = flow.from_source(source=str(REPO_ROOT), entrypoint=ENTRYPOINT)
    deployment_id = source.deploy(
        name=name or dataset,
        work_pool_name=pool,
        schedules=planned,
        parameters=params,
        tags=["curation", dataset],
        description=f"Curate {params['recipe']} into the dataset {dataset!r}",
        print_next_steps=False,
    )
    return f"{source.name}/{name or dataset}", deployment_id


def _require_pool(pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise CurationError(
                f"no work pool {pool!r} on the Prefect server; create one with `prefect work-pool create {pool} --type process` "
                f"and start its worker with `prefect worker start --pool {pool}`"
            ) from None
