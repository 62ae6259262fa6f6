"""`launch run` end to end: the real vLLM (CPU build) on the tiny model, under the launcher, started
the way a container starts it (`python -m launcher run --profile cpu-dev ...`).

One launcher serves the whole module (each vLLM start costs 30-90 s on 2 cores); the tests run in
file order: serve, survive the engine core's death, stop on SIGTERM leaving nothing behind.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e import support
from tests.e2e.conftest import START_TIMEOUT, vllm_environment

STOP_TIMEOUT = 20.0  # supervisor.stop_timeout given to the launcher; vLLM itself stops in ~0.5 s
HEALTH_INTERVAL = 1.0  # so a dead engine is noticed in seconds, not the default 10 s


@dataclass
class Launched:
    server: support.Server
    vllm_url: str
    status_url: str
    model: str
    failed: str | None = None  # set once readiness failed: later tests fail at once, not after minutes

    def status(self) -> dict[str, Any]:
        """/status as JSON; {} when it did not answer 200 (callers poll or assert on the content)."""
        code, body = support.http_get(f"{self.status_url}/status")
        if code != 200:
            return {}
        result: dict[str, Any] = json.loads(body)
        return result

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        if self.failed:
            pytest.fail(f"the launcher never became ready earlier: {self.failed}")
        if not support.wait_http_ok(f"{self.status_url}/readyz", timeout=timeout, alive=self.server.alive):
            self.failed = f"no /readyz 200 within {timeout:.0f} s (launcher exit {self.server.proc.poll()})"
            pytest.fail(f"{self.failed}\n{self.server.log_tail(80)}")

    def api_server_pid(self) -> int:
        pid = self.status().get("pid")
        assert isinstance(pid, int), self.status()
        return pid


def _distinct_ports(free_port: Callable[[], int], count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture(scope="module")
def launched(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    run_dir = tmp_path_factory.mktemp("launch-run")
    vllm_port, status_port = _distinct_ports(support.free_port, 2)
    with vllm_environment(run_dir) as env:
        env["LAUNCH_STATUS_PORT"] = str(status_port)
        env["LAUNCH_LOG_FORMAT"] = "json"
        # Both ways a user tunes the supervisor: the environment and --set.
        env["LAUNCH_SUPERVISOR__HEALTH_TIMEOUT"] = "2s"
        argv = [
            sys.executable,
            "-m",
            "launcher",
            "run",
            "--profile",
            "cpu-dev",
            "--model",
            str(tiny_model),
            "--set",
            f"vllm.port={vllm_port}",
            "--set",
            f"supervisor.stop_timeout={STOP_TIMEOUT:g}",
            "--set",
            f"supervisor.health_interval={HEALTH_INTERVAL:g}",
            "--set",
            "supervisor.backoff_initial=0.5",
        ]
        server = support.Server(argv, env=env, cwd=run_dir, log_path=run_dir / "launch.log")
        try:
            yield Launched(
                server=server,
                vllm_url=f"http://127.0.0.1:{vllm_port}",
                status_url=f"http://127.0.0.1:{status_port}",
                model=str(tiny_model),
            )
        finally:
            server.kill_all()


def _assert_serves(launched: Launched) -> None:
    status, body = support.completion(launched.vllm_url, launched.model)
    assert status == 200, body
    assert body["choices"][0]["text"], body
    status, body = support.chat(launched.vllm_url, launched.model)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"], body


def test_becomes_ready_and_serves_completions_and_chat(launched: Launched) -> None:
    launched.wait_ready()
    assert support.http_get(f"{launched.status_url}/livez")[0] == 200
    assert support.http_get(f"{launched.status_url}/readyz")[0] == 200
    assert support.http_get(f"{launched.vllm_url}/health")[0] == 200
    _assert_serves(launched)

    status = launched.status()
    assert status["state"] == "ready", status
    assert status["restarts"] == 0, status
    children = psutil.Process(launched.server.pid).children()
    assert status["pid"] in [c.pid for c in children], (status, support.describe(children))

    # vLLM's own output reaches the launcher's log as JSON events marked as vLLM's.
    events = []
    for line in launched.server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    assert any(e.get("source") == "vllm" for e in events), launched.server.log_tail()


def test_restarts_vllm_when_its_engine_core_is_killed(launched: Launched) -> None:
    launched.wait_ready()
    old_api = launched.api_server_pid()
    core = support.find_engine_core(old_api)
    assert core is not None, f"no {support.ENGINE_CORE_TITLE} below {old_api}: " + support.describe(
        support.descendants(old_api)
    )
    old_tree = [psutil.Process(old_api), *support.descendants(old_api)]
    launched.server.remember()

    core.kill()

    # The launcher notices (vLLM's API server answers 503, then exits 0 by itself), restarts vLLM,
    # and becomes ready again with a new process.
    assert support.poll(
        lambda: launched.status().get("restarts", 0) >= 1,
        timeout=120,
        interval=0.5,
        alive=launched.server.alive,
    ), f"no restart recorded: {launched.status()}\n{launched.server.log_tail(80)}"
    launched.wait_ready(START_TIMEOUT + 60)
    assert launched.api_server_pid() != old_api
    _assert_serves(launched)
    status = launched.status()
    assert status["restarts"] == 1, status
    leftovers = support.alive_of(old_tree)
    assert not leftovers, "processes of the killed vLLM are still running: " + support.describe(leftovers)


def test_sigterm_stops_vllm_and_leaves_no_process(launched: Launched) -> None:
    launched.wait_ready()
    server = launched.server
    tree = server.remember()
    assert any(support.is_engine_core(p) for p in tree), support.describe(tree)

    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.wait(STOP_TIMEOUT + 15)  # + the launcher's own interpreter shutdown
    took = time.monotonic() - started

    assert code is not None, f"the launcher did not exit within {STOP_TIMEOUT + 15:.0f} s of SIGTERM"
    assert code == 0, f"exit {code}\n{server.log_tail(60)}"
    assert took < STOP_TIMEOUT, f"stopping took {took:.1f} s"
    leftovers = server.leftovers()
    assert not leftovers, "still running after the launcher exited: " + support.describe(leftovers)
    assert support.http_get(f"{launched.vllm_url}/health", timeout=1)[0] == 0
