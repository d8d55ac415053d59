"""Give back a stopped trial's Ray Train workers.

When ASHA stops a trial, Tune ends the trial actor; the Ray Train controller it owns dies with it,
but the worker placement group lives on (a placement group made inside a job lasts as long as the
job). Ray Train's own cleaner finds dead controllers through the dashboard's state API, so without
a dashboard, or with one that cannot be reached, the reservation stays and the next trial waits for
workers forever. Here a small actor owned by the Tune driver watches each trial's controller through
its actor handle (no state API) and removes the placement group once the controller is gone.

`ReleaseWorkersCallback` rides along in every trial's `RunConfig.callbacks`; it hooks the worker
group start, which Ray Train exposes only through its internal callback classes (pinned Ray, see
requirements)."""

from __future__ import annotations

import logging
import threading
import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

log = logging.getLogger(__name__)

NAMESPACE = "argus"


class WorkerReleaser:
    """Watches (controller, placement group) pairs; removes the group when its controller is dead."""

    def __init__(self, interval_s: float = 1.0, ping_timeout_s: float = 10.0):
        self._interval_s = interval_s
        self._ping_timeout_s = ping_timeout_s
        self._watched: dict[str, tuple[ray.actor.ActorHandle, PlacementGroup]] = {}
        self._lock = threading.Lock()
        self._released: list[str] = []
        threading.Thread(target=self._loop, name="release-stopped-trials", daemon=True).start()

    def watch(self, controller: ray.actor.ActorHandle, group: PlacementGroup) -> None:
        with self._lock:
            self._watched[group.id.hex()] = (controller, group)

    def released(self) -> list[str]:
        """Placement groups removed because their controller died without removing them."""
        return list(self._released)

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval_s)
            try:
                self.sweep()
            except Exception:  # keep watching: a failed pass is retried on the next one
                log.exception("releasing stopped trials' placement groups failed; retrying")

    def sweep(self) -> int:
        """One pass: remove the groups of dead controllers. Returns how many are still watched."""
        with self._lock:
            for pg_id, (controller, group) in list(self._watched.items()):
                if self._alive(controller):
                    continue
                if _state(group) not in ("REMOVED", None):
                    remove_placement_group(group)
                    self._released.append(pg_id)
                    log.warning("released placement group %s of a stopped Ray Train run", pg_id)
                del self._watched[pg_id]
            return len(self._watched)

    def _alive(self, controller: ray.actor.ActorHandle) -> bool:
        try:
            ray.get(controller.__ray_ready__.remote(), timeout=self._ping_timeout_s)
            return True
        except GetTimeoutError:  # busy or unreachable for now: not known to be dead
            return True
        except RayActorError:
            return False


def _state(group: PlacementGroup) -> str | None:
    table = placement_group_table(group)
    return table.get("state") if table else None


def settle(releaser: ray.actor.ActorHandle, timeout_s: float = 60.0) -> int:
    """After the search: wait until every watched run's controller has gone (its group released
    if it was left behind); returns how many groups were released over the whole search."""
    deadline = time.monotonic() + timeout_s
    while ray.get(releaser.sweep.remote()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return len(ray.get(releaser.released.remote()))


def start_releaser() -> tuple[ray.actor.ActorHandle, str]:
    """The driver's releaser and its name (one per search, i.e. per Ray job; named so every trial's
    controller finds it; it dies with the driver)."""
    name = f"argus-release-workers-{ray.get_runtime_context().get_job_id()}"
    actor = ray.remote(num_cpus=0)(WorkerReleaser).options(name=name, namespace=NAMESPACE, get_if_exists=True).remote()
    return actor, name


class ReleaseWorkersCallback(WorkerGroupCallback):
    """Runs in the Ray Train controller: registers each new worker group with the search's releaser."""

    def __init__(self, releaser_name: str):
        self.releaser_name = releaser_name

    def after_worker_group_start(self, worker_group) -> None:
        group = worker_group.get_worker_group_state().placement_group_handle.placement_group
        releaser = ray.get_actor(self.releaser_name, namespace=NAMESPACE)
        controller = ray.get_runtime_context().current_actor
        ray.get(releaser.watch.remote(controller, group))
