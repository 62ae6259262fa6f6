"""`launch demo`: the launcher's own `run`, on a tiny model built locally, on a machine without an NPU.

    launch demo [RUN OPTIONS...] [-- EXTRA_VLLM_ARGS...]

It needs vLLM's CPU build and transformers (the `cpu` extra). The model is random: the answers are
gibberish, but every path (rules, plan, supervision, status endpoint, OpenAI API) is the real one.
Everything it writes stays under ${LAUNCH_DEMO_DIR:-~/.cache/launch/demo}. Ctrl-C stops it cleanly:
the supervisor forwards SIGINT to vLLM and waits for it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from launcher.errors import EXIT_ENVIRONMENT

DEFAULT_PORT = 8080  # what the cpu-dev profile renders
SERVED_NAME = "tiny-llama"


# vLLM binds ZMQ IPC sockets at $TMPDIR/<uuid4>, and a unix socket path holds at most 107 bytes; with a
# longer TMPDIR vLLM dies seconds into its start ("ipc path ... is longer than 107 characters").
MAX_TMPDIR_LEN = 107 - 1 - 36


def demo_root() -> Path:
    # Absolute: vLLM's processes get these paths, and they may not share the launcher's cwd.
    return Path(os.environ.get("LAUNCH_DEMO_DIR") or "~/.cache/launch/demo").expanduser().absolute()


def demo_tmpdir(root: Path) -> Path:
    """`root`/tmp, or a short per-user directory under /tmp when that path is too long for vLLM."""
    tmp = root / "tmp"
    return tmp if len(str(tmp)) <= MAX_TMPDIR_LEN else Path("/tmp") / f"launch-demo-{os.getuid()}"


def demo_environment(root: Path) -> dict[str, str]:
    """Variables vLLM needs to stay inside `root` and offline. Values already set win: the operator
    chose them on purpose (the same rule the launcher applies to a profile's `env:`)."""
    wanted = {
        # vLLM, torch and huggingface_hub write outside the working directory; keep it all here.
        "TMPDIR": str(demo_tmpdir(root)),
        "VLLM_CACHE_ROOT": str(root / "vllm-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor-cache"),
        "HF_HOME": str(root / "hf-home"),
        "HF_HUB_OFFLINE": "1",  # nothing to download: the model is local
        # GiB for the KV cache; vLLM's CPU default takes a large share of the machine's memory.
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    return {name: value for name, value in wanted.items() if not os.environ.get(name)}


def _port_from(argv: list[str]) -> int:
    """The vLLM port the run will use, for the hint only: `--set vllm.port=N` or LAUNCH_VLLM__PORT."""
    port = os.environ.get("LAUNCH_VLLM__PORT") or ""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        value = argv[i + 1] if arg == "--set" and i + 1 < len(argv) else arg.removeprefix("--set=")
        if value.startswith("vllm.port="):
            port = value.split("=", 1)[1]
    return int(port) if port.isdigit() else DEFAULT_PORT


def hint(port: int, model_dir: Path) -> str:
    return (
        f"launch demo: serving a tiny random-weight model ({model_dir}); its answers are gibberish.\n"
        f"  ready in about a minute (status: launch's log, or GET /readyz on LAUNCH_STATUS_PORT); then\n"
        f"  try: curl http://127.0.0.1:{port}/v1/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{SERVED_NAME}", "prompt": "Hello", "max_tokens": 16}}\'\n'
        f"  Ctrl-C stops it."
    )


def main(argv: list[str]) -> int:
    root = demo_root()
    # Before anything imports torch: importing it sets TORCHINDUCTOR_CACHE_DIR (to /tmp/torchinductor_$USER)
    # in os.environ when unset, and the demo's own value would then lose to it.
    env = demo_environment(root)
    for name in ("TMPDIR", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "HF_HOME"):
        if name in env:
            Path(env[name]).mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ.update(env)  # the launcher passes its environment on to vLLM

    try:
        from launcher.tinymodel import ensure_tiny_model

        model_dir = ensure_tiny_model(root / "models")
    except ImportError as err:
        print(
            f"launch demo: {err.name or err} is not installed; the demo needs vLLM's CPU build and "
            "transformers: pip install 'launch[cpu]' (from a checkout: bash .ci/setup)",
            file=sys.stderr,
        )
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        return 130

    print(hint(_port_from(argv), model_dir), file=sys.stderr, flush=True)

    from launcher.cli import main as cli_main

    # The user's arguments come last, so their --set/--profile beat the demo's choices.
    return cli_main(
        [
            "run",
            "--profile",
            "cpu-dev",
            "--model",
            str(model_dir),
            "--set",
            f"vllm.served_model_name={SERVED_NAME}",
            *argv,
        ]
    )
