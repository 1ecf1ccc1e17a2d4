"""The service's life: loading the object store at start, reloading it, and stopping.

``POST /v1/admin/reload`` or SIGHUP reloads and verifies the store while the old objects keep
serving, and so does a change of the store's packages, looked for every ``watch_store_s``.
Everything lives on ``app.state`` (:mod:`service.deps`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from cloudpose.estimation.served import ObjectRegistry
from cloudpose.store.package import StoreError
from service.hard import HardProcesses

logger = logging.getLogger("cloudpose.service")


async def reload_objects(app: FastAPI) -> ObjectRegistry:
    """Load and verify the store beside the served one, then swap; requests in flight keep
    the objects they started with. Raises StoreError (the old objects stay)."""
    state = app.state
    async with state.reload_lock:
        try:
            registry = await asyncio.to_thread(ObjectRegistry.load, state.settings)
        except StoreError as error:
            logger.error("reload refused, still serving the previous objects: %s", error)
            raise
        state.objects = registry
        if state.hard is not None:
            # Fresh processes load the new store; the old ones finish their jobs and end.
            old, state.hard = state.hard, HardProcesses(state.settings, state.settings.hard_lanes)
            old.shutdown()
        state.metrics.models(registry.model_ids())
        logger.info("reloaded the object store: %s", registry.model_ids())
        return registry


async def watch_store(app: FastAPI) -> None:
    """Reload when a package of the served stores is added, replaced or removed: packages are
    renamed into place whole (cloudpose.store.package), so a change seen is a complete package. A
    broken one is refused once (logged) and tried again when the store changes again."""
    settings = app.state.settings
    store = settings.object_store()
    refused = None
    while True:
        await asyncio.sleep(settings.watch_store_s)
        try:
            signature = await asyncio.to_thread(store.signature)
        except OSError as error:
            logger.warning("cannot look at the object store %s: %s", store, error)
            continue
        if signature == app.state.objects.signature or signature == refused:
            continue
        logger.info("the object store %s changed: reloading", store)
        try:
            await reload_objects(app)
            refused = None
        except StoreError:
            refused = signature


def _reload_on_hangup(app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
    """SIGHUP reloads the store (when this is the main thread of a system with signals)."""

    def on_hangup() -> None:
        async def reload() -> None:
            try:
                await reload_objects(app)
            except StoreError:
                pass  # logged; the previous objects keep serving

        loop.create_task(reload())

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals
        pass


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the store, start the pose workers (and hard-cloud processes) and the store's watch;
    stop them at the end."""
    state = app.state
    settings = state.settings
    state.reload_lock = asyncio.Lock()
    state.objects = ObjectRegistry.load(settings)
    state.metrics.models(state.objects.model_ids())
    state.workers.start()
    if settings.hard_processes:
        state.hard = HardProcesses(settings, settings.hard_lanes)
        state.workers.hard_ready = lambda: state.hard.ready()
    loop = asyncio.get_running_loop()
    _reload_on_hangup(app, loop)
    watcher = None
    if settings.watch_store_s > 0 and settings.model_path is None:
        watcher = loop.create_task(watch_store(app))
    yield
    if watcher is not None:
        watcher.cancel()
    state.workers.stop()
    if state.hard is not None:
        state.hard.shutdown()
