"""Checks of the host before anything starts: is vLLM's port free. Acting part: opens a socket."""

from __future__ import annotations

import errno
import socket

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
