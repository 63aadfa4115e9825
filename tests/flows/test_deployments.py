"""Scheduled deployments against a real Prefect server on 127.0.0.1.

The test starts `prefect server start` with its own PREFECT_HOME, serves a small recipe with
`curate serve` (a subprocess), triggers a run through the API, waits for it, checks the
published version against a direct run, registers the repository's prefect.yaml with
`prefect deploy --all` and a recipe with `curate deploy`, then stops every process it
started by its process group, failures included.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from curate.cli import app
from curation.run.runner import curate
from curation.store.catalog import DatasetStore
from curation.store.query import sql
from tests.helpers import recipe_config, write_recipe
from tests.support.vllm_server import free_port

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
CURATE = [sys.executable, "-m", "curate.cli"]
SERVER_START_S = 180  # ~13 s on an idle 2-core machine; far more when it is loaded
RUN_TIMEOUT_S = 240


class Started:
    """A subprocess in its own session, logged to a file, stopped by its process group."""

    def __init__(self, args: list[str], *, env: dict[str, str], log: Path, cwd: Path = REPO):
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self, grace_s: float = 30) -> int | None:
        """SIGTERM to the group (a served runner pauses its schedules), then SIGKILL."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # children that outlived the leader (same group)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._fh.close()
        return self.proc.returncode


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 1.0, proc: Started | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail at once if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.proc.returncode}\n{proc.tail()}")
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not there yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f"\n{proc.tail()}" if proc else ""))
        time.sleep(every_s)


def healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
        return reply.read().strip() == b"true"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A Prefect server on a free loopback port; yields the environment its clients need."""
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    proc = Started(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=base | {"PREFECT_HOME": str(tmp / "server-home")},
        log=tmp / "server.log",
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(lambda: healthy(url), SERVER_START_S, "prefect server start", proc=proc)
        yield base | {
            "PREFECT_API_URL": url,
            "PREFECT_HOME": str(tmp / "client-home"),
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",  # the served runner picks up a triggered run within 2 s
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
    finally:
        proc.stop()


class Api:
    """The test's own client of that server (not the ephemeral one other tests use)."""

    def __init__(self, env: dict[str, str]):
        self.url = env["PREFECT_API_URL"]

    def __call__(self, fn: Callable[[Any], Any]) -> Any:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.url}), get_client(sync_client=True) as client:
            return fn(client)

    def wait_final(self, flow_run_id: Any, log: Callable[[], str]) -> Any:
        state = wait_for(
            lambda: (s := self(lambda c: c.read_flow_run(flow_run_id).state)) is not None and s.is_final() and s,
            RUN_TIMEOUT_S,
            f"flow run {flow_run_id}",
            every_s=2,
        )
        assert state.is_completed(), f"flow run ended {state.name}: {state.message}\n{log()}"
        return state


def crons(deployment: Any) -> list[str]:
    return [s.schedule.cron for s in deployment.schedules if s.active]


def scheduled_starts(api: Api, deployment_id: Any) -> list[Any]:
    """Start times of the runs the server's scheduler created from the deployment's schedule."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = api(lambda c: c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))))
    return [r.expected_start_time.astimezone(dt.timezone.utc) for r in runs if r.state and r.state.name == "Scheduled"]


def hh_sources(hh_path: Path, limit: int) -> list[dict]:
    return [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": limit}]


def test_a_served_deployment_runs_on_the_server_and_publishes(server, tmp_path, hh_path):
    api = Api(server)
    sources = hh_sources(hh_path, 150)
    recipe = write_recipe(tmp_path / "served", sources, dataset="hh-served")
    serve = Started([*CURATE, "serve", str(recipe), "--cron", "0 3 * * *", "--name", "hh-nightly"], env=server, log=tmp_path / "serve.log")
    try:
        dep = wait_for(lambda: api(lambda c: c.read_deployment_by_name("curate-recipe/hh-nightly")), 120, "curate serve", proc=serve)
        assert crons(dep) == ["0 3 * * *"] and dep.schedules[0].schedule.timezone == "UTC"
        assert dep.parameters == {"recipe": str(recipe.resolve()), "data_root": None}
        assert dep.entrypoint == "flows.curate.curate_recipe_flow"
        run = api(lambda c: c.create_flow_run_from_deployment(dep.id))
        api.wait_final(run.id, serve.tail)
        arts = api(lambda c: c.read_artifacts())
        planned = wait_for(lambda: scheduled_starts(api, dep.id), 60, "the server's scheduler to plan the cron runs")
        assert all((t.hour, t.minute) == (3, 0) for t in planned)  # 03:00 UTC, the cron's time
    finally:
        code = serve.stop()
    assert code is not None
    paused = api(lambda c: c.read_deployment_by_name("curate-recipe/hh-nightly")).paused
    assert paused, f"SIGTERM (exit {code}) left the schedule running\n{serve.tail()}"  # Ctrl-C/SIGTERM pauses it

    root = tmp_path / "served" / "root"
    info = DatasetStore(root).version("hh-served")
    assert info.version == 1 and info.counts["rows_in"] == 150
    direct = recipe_config(tmp_path / "direct", sources, dataset="hh-served")
    curate(direct)
    q = "SELECT pair_id, chosen, rejected FROM pairs ORDER BY pair_id"
    assert sql(q, str(root)).equals(sql(q, direct.data_root))
    assert info.counts["kept"] == DatasetStore(direct.data_root).version("hh-served").counts["kept"]
    assert {"funnel-hh-served", "funnel-table-hh-served", "timings-hh-served", "report-hh-served"} <= {a.key for a in arts}


def test_serve_pauses_the_schedules_when_prefects_own_shutdown_did_not(server, tmp_path, hh_path, monkeypatch):
    """Prefect's runner pauses on shutdown inside its event loop's teardown; a serve that
    stopped without that step (here: registered, then returned) still leaves them paused."""
    import prefect
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import serve_recipes

    def registers_then_stops(*deployments: Any, limit: int | None = None) -> None:
        for deployment in deployments:
            deployment.apply()

    monkeypatch.setattr(prefect, "serve", registers_then_stops)
    recipe = write_recipe(tmp_path / "stopped", hh_sources(hh_path, 10), dataset="hh-stopped")
    api = Api(server)
    with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}):
        serve_recipes([recipe], cron=["0 4 * * *"], timezone="UTC")
    dep = api(lambda c: c.read_deployment_by_name("curate-recipe/hh-stopped"))
    assert dep.paused and crons(dep) == ["0 4 * * *"]


def test_prefect_yaml_and_curate_deploy_register_scheduled_deployments(server, tmp_path, hh_path):
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.flows import load_flow_from_entrypoint
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from curation.errors import CurationError
    from flows.deployments import deploy_recipe

    api = Api(server)
    api(lambda c: c.create_work_pool(WorkPoolCreate(name="curation", type="process"), overwrite=True))
    recipe = write_recipe(tmp_path / "deployed", hh_sources(hh_path, 50), dataset="hh-deployed")
    with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}), pytest.raises(CurationError) as err:
        deploy_recipe(recipe, pool="no-such-pool", cron=[])
    assert "prefect work-pool create no-such-pool --type process" in str(err.value)

    yaml_deploy = Started([PREFECT, "--no-prompt", "deploy", "--all"], env=server, log=tmp_path / "prefect-deploy.log")
    try:  # the two registrations run side by side
        cli = [*CURATE, "deploy", str(recipe), "--pool", "curation", "--cron", "30 2 * * 1-5", "--timezone", "Europe/Paris"]
        out = subprocess.run(cli, cwd=tmp_path, env=server, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "curate-recipe/hh-deployed" in out.stdout, out.stdout + out.stderr
        assert yaml_deploy.proc.wait(300) == 0, yaml_deploy.tail()
    finally:
        yaml_deploy.stop()
    dep = api(lambda c: c.read_deployment_by_name("curate-recipe/hh-deployed"))
    assert crons(dep) == ["30 2 * * 1-5"] and dep.schedules[0].schedule.timezone == "Europe/Paris"
    assert dep.work_pool_name == "curation" and dep.parameters["recipe"] == str(recipe.resolve())
    assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["deployments"]
    for d in spec["deployments"]:
        dep = api(lambda c, d=d: c.read_deployment_by_name(f"curate-recipe/{d['name']}"))
        assert (dep.entrypoint, dep.work_pool_name) == (d["entrypoint"], "curation")
        assert crons(dep) == [s["cron"] for s in d["schedules"]] and dep.parameters == d["parameters"]
        assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
        assert (REPO / d["parameters"]["recipe"]).is_file()
        path, _, fn = d["entrypoint"].partition(":")
        assert load_flow_from_entrypoint(f"{REPO / path}:{fn}").name == "curate-recipe"


def test_serve_and_deploy_explain_themselves_and_need_a_server(tmp_path, hh_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    for cmd in ("serve", "deploy"):
        shown = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0 and "--cron" in shown.output and "PREFECT_API_URL" in shown.output
    recipe = write_recipe(tmp_path, hh_sources(hh_path, 10), dataset="hh")
    refused = subprocess.run(
        [*CURATE, "serve", str(recipe), "--cron", "0 3 * * *"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "needs a Prefect server" in refused.stderr and "prefect server start" in refused.stderr
    assert "Traceback" not in refused.stderr
