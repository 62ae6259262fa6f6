"""`launch demo`, the README's main job: it builds the tiny model, serves it under `launch run`, and
Ctrl-C (SIGINT) stops it cleanly."""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from launcher import demo
from tests.e2e import support
from tests.e2e.conftest import START_TIMEOUT, clean_env

STOP_TIMEOUT = 20.0


def test_demo_serves_the_tiny_model_and_stops_on_ctrl_c(
    tmp_path: Path, run_dir: Path, free_port: Callable[[], int]
) -> None:
    vllm_port = free_port()
    status_port = free_port()
    while status_port == vllm_port:
        status_port = free_port()
    # The demo must set up vLLM's directories and offline mode itself: give it none of them.
    demo_owns = {"TMPDIR", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "HF_HOME", "HF_HUB_OFFLINE"}
    env = {k: v for k, v in clean_env().items() if k not in demo_owns and k != "VLLM_CPU_KVCACHE_SPACE"}
    demo_dir = tmp_path / "demo"
    env.update(
        LAUNCH_DEMO_DIR=str(demo_dir),
        LAUNCH_STATUS_PORT=str(status_port),
        # The environment rather than `demo --set ...`: the CLI's `demo` subcommand does not pass
        # options on yet (argparse's REMAINDER stops at a leading option).
        LAUNCH_VLLM__PORT=str(vllm_port),
        LAUNCH_SUPERVISOR__STOP_TIMEOUT=f"{STOP_TIMEOUT:g}",
    )
    argv = [sys.executable, "-m", "launcher", "demo"]
    short_tmp = demo.demo_tmpdir(demo_dir)
    litter = short_tmp if not short_tmp.exists() and demo_dir not in short_tmp.parents else None
    server = support.Server(argv, env=env, cwd=run_dir, log_path=run_dir / "demo.log")
    try:
        ready = support.wait_http_ok(
            f"http://127.0.0.1:{status_port}/readyz", timeout=START_TIMEOUT, alive=server.alive
        )
        assert ready, f"launch demo not ready (exit {server.proc.poll()}):\n{server.log_tail(80)}"
        log = server.log_path.read_text(errors="replace")
        assert f"try: curl http://127.0.0.1:{vllm_port}/v1/completions" in log, log[-3000:]

        status, body = support.completion(f"http://127.0.0.1:{vllm_port}", demo.SERVED_NAME)
        assert status == 200, body
        assert body["choices"][0]["text"], body
        # Everything it wrote is under LAUNCH_DEMO_DIR: the model and vLLM's scratch directories (TMPDIR
        # too, unless pytest's path is too long for vLLM's sockets: then it is a short one in /tmp).
        expected = {"hf-home", "inductor-cache", "models", "vllm-cache"}
        if demo.demo_tmpdir(demo_dir) == demo_dir / "tmp":
            expected.add("tmp")
        assert {p.name for p in demo_dir.iterdir()} == expected

        server.remember()
        server.proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal delivers
        code = server.wait(STOP_TIMEOUT + 15)
        assert code == 0, f"exit {code} after SIGINT\n{server.log_tail(60)}"
        leftovers = server.leftovers()
        assert not leftovers, "still running after Ctrl-C: " + support.describe(leftovers)
    finally:
        server.kill_all()
        if litter is not None:
            shutil.rmtree(litter, ignore_errors=True)
