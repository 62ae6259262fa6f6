"""Checks of the host before anything starts: is vLLM's port free. Acting part: opens a socket."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping

from launcher.errors import PreflightError
from launcher.plan import Plan


def port_is_free(plan: Plan) -> None:
    family = socket.AF_INET6 if ":" in plan.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same option as the server will use, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((plan.host, plan.port))
        except OSError as exc:
            what = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise PreflightError(
                f"vLLM's port {plan.host}:{plan.port} cannot be bound: {what}",
                key="vllm.port",
                value=plan.port,
                source=plan.sources.get("vllm.port"),
                fix="stop what listens there (`ss -ltnp`), or pick another port: --set vllm.port=8081",
            ) from None


# vLLM binds ZMQ sockets at $TMPDIR/<uuid4> (36 characters + "/"); a Unix socket path holds at most
# 107 bytes, so a longer TMPDIR kills vLLM seconds into its start with "ipc path ... is longer than".
MAX_TMPDIR = 70


def tmpdir_fits(plan: Plan, environ: Mapping[str, str]) -> None:
    tmpdir = plan.child_environ(environ).get("TMPDIR") or "/tmp"
    if len(os.path.abspath(tmpdir)) > MAX_TMPDIR:
        raise PreflightError(
            f"TMPDIR is {len(tmpdir)} characters long; vLLM's IPC socket paths under it would exceed the "
            "107-byte limit of a Unix socket and vLLM would fail seconds into its start",
            key="TMPDIR",
            value=tmpdir,
            source="the environment",
            fix=f"point TMPDIR at a directory whose path has at most {MAX_TMPDIR} characters, e.g. /tmp",
        )
