"""Which Prefect task runner runs a recipe's tasks: one config switch, no scheduler of our own.

``orchestration: {task_runner: ray}`` hands the flow's tasks to Prefect's Ray task runner
(prefect-ray); with no ``ray_address`` it starts a local Ray instance for the run, bound to
loopback, otherwise it joins the named cluster. The local runner is Prefect's thread pool.
"""

from __future__ import annotations

from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from curation.config import OrchestrationConfig
from curation.errors import ConfigError

LOCAL_WORKERS = 4  # filter steps and stages run one after another; a few threads are plenty


def ray_init_kwargs(orch: OrchestrationConfig) -> dict[str, Any]:
    """ray.init() arguments: a local instance stays on 127.0.0.1 (Ray binds the external
    address by default) and does not start its dashboard unless asked."""
    kwargs: dict[str, Any] = {}
    if orch.ray_address is None:
        kwargs |= {"_node_ip_address": "127.0.0.1", "include_dashboard": False}
    return kwargs | orch.ray_init


def task_runner_for(orch: OrchestrationConfig) -> TaskRunner:
    if orch.task_runner == "local":
        return ThreadPoolTaskRunner(max_workers=LOCAL_WORKERS)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise ConfigError(
            "orchestration.task_runner: ray needs Ray and prefect-ray; install them with "
            "`pip install -e '.[ray]'` (install.sh does), or set task_runner: local"
        ) from None
    return RayTaskRunner(address=orch.ray_address, init_kwargs=ray_init_kwargs(orch))
