"""Hard clouds in processes of their own, at a lower CPU priority.

A cloud that turns out to be hard (``service.compute``: it used ``SLOW_AFTER_MS`` of CPU) leaves
the server process: it is estimated again, from the start, in one of a few worker processes that
run at a lower priority (``HARD_NICE``) and hold the same objects. Threads of one process share
one interpreter lock, so a hard cloud computing beside easy ones slows them down whatever its
thread's priority; a process of its own does not, and the system's scheduler then gives the easy
ones the CPU first. The redone start (the network and a first registration) costs a few
milliseconds of a search that runs for up to its budget.

The processes are started with the server (``spawn``: no state is shared), load the object
store themselves, and are replaced with fresh ones when the store is reloaded.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures import TimeoutError as ResultTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import numpy as np

from cloudpose.budget import Budget
from cloudpose.estimation.served import ObjectPose, ObjectRegistry
from cloudpose.settings import Settings

logger = logging.getLogger("cloudpose.hard")

# Niceness of the hard-cloud processes (0 is normal, 19 the lowest priority).
HARD_NICE = 10
# Hard jobs waiting per process at most; beyond, a hard cloud gets its best pose at once.
WAITING_PER_PROCESS = 2
# How often a hard-cloud process checks that its server is still there.
PARENT_CHECK_S = 1.0
# How long past a request's budget its answer may take to come back from a process.
RESULT_GRACE_S = 1.0

_registry: ObjectRegistry | None = None  # in each hard-cloud process


def _start(settings_json: str, server_pid: int) -> None:
    global _registry
    try:
        os.nice(HARD_NICE)
    except OSError:
        pass
    threading.Thread(target=_end_with, args=(server_pid,), name="cloudpose-parent-watch", daemon=True).start()
    _registry = ObjectRegistry.load(Settings.model_validate_json(settings_json))


def _end_with(parent: int) -> None:
    """End this process soon after the server that started it, however the server ended (a
    SIGKILL leaves no chance to stop its children), also when that happened while this process
    was still starting."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _ready() -> bool:
    return _registry is not None


def _estimate(
    name: str, clouds: list[np.ndarray], refine: bool, units: str | None, per_cloud_s: float, end_wall: float
) -> list[ObjectPose]:
    served = _registry.objects[name]

    def budget() -> Budget:
        return Budget(max(0.0, min(per_cloud_s, end_wall - time.time())), nominal_s=per_cloud_s)

    return served.estimate(clouds, refine, units, budgets=budget)


class HardProcesses:
    """``processes`` lower-priority worker processes that pose hard clouds.

    Args:
        settings: the service's settings (the processes load the same store).
        processes: how many; hard clouds computing at once.
    """

    def __init__(self, settings: Settings, processes: int) -> None:
        self.processes = processes
        self._settings_json = settings.model_dump_json()
        self._lock = threading.Lock()
        self._closed = False
        self.pending = 0
        self._executor = self._start_processes()

    def _start_processes(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(
            self.processes,
            mp_context=get_context("spawn"),
            initializer=_start,
            initargs=(self._settings_json, os.getpid()),
        )
        # Start them now, not on the first hard cloud; ready() says when they have loaded.
        self._warm = [executor.submit(_ready) for _ in range(self.processes)]
        return executor

    def ready(self) -> bool:
        """Whether the processes have started and loaded the store."""
        return all(future.done() and not future.exception() and future.result() for future in self._warm)

    def estimate(
        self,
        name: str,
        clouds: list[np.ndarray],
        refine: bool,
        units: str | None,
        per_cloud_s: float,
        end_wall: float,
    ) -> list[ObjectPose] | None:
        """The clouds' answers from a hard-cloud process (blocks the calling thread), or None when
        too many hard clouds are already waiting, or the answer would come after the request's
        budget (``end_wall``, wall-clock seconds) and a moment more."""
        with self._lock:
            if self.pending >= self.processes * (1 + WAITING_PER_PROCESS):
                return None
            self.pending += 1
        executor = self._executor
        try:
            future = executor.submit(_estimate, name, clouds, refine, units, per_cloud_s, end_wall)
            return future.result(timeout=max(0.0, end_wall - time.time()) + RESULT_GRACE_S)
        except ResultTimeout:
            future.cancel()  # if it has not started, it never will
            return None
        except CancelledError:  # shut down (a reload) before it started
            return None
        except BrokenProcessPool:  # a process died (killed, out of memory, a reload's shutdown)
            with self._lock:
                if self._executor is executor and not self._closed:
                    logger.error("a hard-cloud process died; starting new ones")
                    self._executor = self._start_processes()
            return None
        finally:
            with self._lock:
                self.pending -= 1

    def shutdown(self) -> None:
        """End the processes now (does not wait). A job still running is cut short; its request
        gets its best pose at once (``estimate`` returns None)."""
        with self._lock:
            self._closed = True
        processes = list((self._executor._processes or {}).values())  # the executor keeps no public list
        self._executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
