"""What the supervisor knows about vLLM, and the small HTTP endpoint that tells it to Kubernetes.

`Status` is written only by the supervisor loop and read by the handlers; both run on the same event
loop, so no locking is needed. The endpoint never forwards anything to vLLM: clients talk to vLLM's
own port directly.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


def _iso(wall: float | None) -> str | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")


class Status:
    """The supervisor's state, mirrored into Prometheus metrics on a private registry."""

    def __init__(self) -> None:
        self.state = "starting"  # starting, warming_up, ready, unhealthy, stopping, backoff, exited
        self.pid: int | None = None
        self.restarts = 0
        self.ready = False
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.startup_seconds: float | None = None
        self.phases: dict[str, float] = {}
        self.last_exit_code: int | None = None
        self.last_exit_reason: str | None = None
        self.last_exit_hint: str | None = None
        self.cache: Callable[[], dict[str, Any] | None] = lambda: None  # the cache entry in use

        self.registry = CollectorRegistry(auto_describe=True)
        self._restarts = Counter("launch_restarts", "vLLM restarts done by the launcher", registry=self.registry)
        self._health_failures = Counter(
            "launch_health_check_failures", "Failed /health checks of a ready vLLM", registry=self.registry
        )
        self._up = Gauge("launch_child_up", "1 while a vLLM process is running", registry=self.registry)
        self._ready = Gauge("launch_ready", "1 while vLLM is healthy and warmed up", registry=self.registry)
        self._startup = Gauge(
            "launch_last_startup_seconds",
            "Seconds from spawn to ready of the last start",
            registry=self.registry,
        )
        self._exit = Gauge(
            "launch_last_exit_code",
            "Exit code of the last vLLM process (NaN: none yet)",
            registry=self.registry,
        )
        self._startup.set(math.nan)
        self._exit.set(math.nan)

    # Transitions, called by the supervisor loop.

    def child_started(self, pid: int) -> None:
        self.state, self.pid, self.ready = "starting", pid, False
        self.started_at, self.ready_at, self.startup_seconds = time.time(), None, None
        self.phases = {}
        self._up.set(1)
        self._ready.set(0)

    def phase(self, name: str, elapsed: float) -> None:
        self.phases[name] = round(elapsed, 3)

    def warming_up(self) -> None:
        self.state = "warming_up"

    def became_ready(self, startup_seconds: float) -> None:
        self.state, self.ready = "ready", True
        self.ready_at, self.startup_seconds = time.time(), round(startup_seconds, 3)
        self._ready.set(1)
        self._startup.set(startup_seconds)

    def health(self, ok: bool) -> None:
        if self.state not in ("ready", "unhealthy"):
            return
        self.state, self.ready = ("ready", True) if ok else ("unhealthy", False)
        self._ready.set(1 if ok else 0)
        if not ok:
            self._health_failures.inc()

    def stopping(self) -> None:
        self.state, self.ready = "stopping", False
        self._ready.set(0)

    def child_exited(self, code: int, reason: str, hint: str | None) -> None:
        self.state, self.pid, self.ready = "exited", None, False
        self.last_exit_code, self.last_exit_reason, self.last_exit_hint = code, reason, hint
        self._up.set(0)
        self._ready.set(0)
        self._exit.set(code)

    def backoff(self) -> None:
        self.state = "backoff"

    def restarted(self) -> None:
        self.restarts += 1
        self._restarts.inc()

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "ready": self.ready,
            "pid": self.pid,
            "restarts": self.restarts,
            "started_at": _iso(self.started_at),
            "ready_at": _iso(self.ready_at),
            "startup_seconds": self.startup_seconds,
            "phases": dict(self.phases),
            "last_exit_code": self.last_exit_code,
            "last_exit_reason": self.last_exit_reason,
            "last_exit_hint": self.last_exit_hint,
            "launcher_pid": os.getpid(),
            "cache": self.cache(),
        }

    def metrics(self) -> bytes:
        return generate_latest(self.registry)


def make_app(status: Status) -> web.Application:
    async def livez(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")  # the launcher's loop answers: it is alive

    async def readyz(_: web.Request) -> web.Response:
        if status.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {status.state}\n")

    async def status_json(_: web.Request) -> web.Response:
        return web.json_response(status.snapshot())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=status.metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status_json)
    app.router.add_get("/metrics", metrics)
    return app


class StatusServer:
    """Serves `make_app(status)` on every interface; port 0 picks a free port (see `.port`)."""

    def __init__(self, status: Status, port: int) -> None:
        self._runner = web.AppRunner(make_app(status), access_log=None)  # probes every few seconds: no spam
        self._requested_port = port
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host=None, port=self._requested_port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        # With port 0 each address family gets its own free port: report the IPv4 one (2-tuples).
        ports = [addr[1] for addr in self._runner.addresses if isinstance(addr, tuple) and len(addr) == 2]
        ports = ports or [addr[1] for addr in self._runner.addresses if isinstance(addr, tuple)]
        if ports:
            self.port = int(ports[0])

    async def close(self) -> None:
        await self._runner.cleanup()
