"""launcher.status: the endpoint's answers follow the supervisor's state."""

from __future__ import annotations

import asyncio
import json
import math

import aiohttp
import uvloop

from launcher.status import Status, StatusServer


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


def test_status_endpoint_answers_from_state():
    async def scenario() -> None:
        status = Status()
        server = StatusServer(status, 0)
        await server.start()
        base = f"http://127.0.0.1:{server.port}"
        try:
            async with aiohttp.ClientSession() as http:

                async def get(path: str) -> tuple[int, str]:
                    async with http.get(base + path) as response:
                        return response.status, await response.text()

                assert (await get("/livez"))[0] == 200
                assert (await get("/readyz"))[0] == 503
                text = (await get("/metrics"))[1]
                assert math.isnan(metric(text, "launch_last_exit_code"))
                assert metric(text, "launch_child_up") == 0

                status.child_started(4242)
                status.phase("weights_loaded", 1.23456)
                status.became_ready(2.5)
                assert (await get("/readyz"))[0] == 200
                snapshot = json.loads((await get("/status"))[1])
                assert snapshot["state"] == "ready" and snapshot["pid"] == 4242
                assert snapshot["phases"] == {"weights_loaded": 1.235}
                assert snapshot["ready_at"].endswith("Z")

                status.health(False)
                assert (await get("/readyz"))[0] == 503
                status.health(True)
                assert (await get("/readyz"))[0] == 200

                status.stopping()
                status.health(True)  # a late probe must not make a stopping vLLM ready again
                assert (await get("/readyz"))[0] == 503
                status.child_exited(137, "oom_killed", "raise the limit")
                status.restarted()
                snapshot = json.loads((await get("/status"))[1])
                assert (snapshot["last_exit_code"], snapshot["last_exit_reason"]) == (137, "oom_killed")
                assert snapshot["restarts"] == 1 and snapshot["pid"] is None
                text = (await get("/metrics"))[1]
                assert metric(text, "launch_last_exit_code") == 137
                assert metric(text, "launch_restarts_total") == 1
                assert metric(text, "launch_health_check_failures_total") == 1
                assert metric(text, "launch_last_startup_seconds") == 2.5
                assert (await get("/nothing"))[0] == 404
        finally:
            await server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_a_busy_port_is_an_error():
    async def scenario() -> None:
        first = StatusServer(Status(), 0)
        await first.start()
        try:
            second = StatusServer(Status(), first.port)
            try:
                await second.start()
            except OSError:
                return
            await second.close()
            raise AssertionError("two servers on one port")
        finally:
            await first.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
