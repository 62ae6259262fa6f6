"""HTTP probes of vLLM's own server: `/health`, and the warm-up request that precedes readiness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from launcher.plan import Plan

WARMUP_PROMPT = "hello"
WARMUP_TOKENS = 8


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str  # "HTTP 200", "HTTP 503", "timed out after 5s", "connection refused", ...
    status: int | None = None


def warmup_request(plan: Plan) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) of the smallest request that runs the model end to end on this entrypoint."""
    if plan.entrypoint == "api_server":
        return "/generate", {"prompt": WARMUP_PROMPT, "max_tokens": WARMUP_TOKENS}
    body: dict[str, Any] = {"prompt": WARMUP_PROMPT, "max_tokens": WARMUP_TOKENS}
    model = plan.served_model_name or plan.model
    if model:
        body = {"model": model, **body}
    return "/v1/completions", body


class Prober:
    """One HTTP client for the supervisor's whole life; created lazily inside the event loop."""

    def __init__(self, plan: Plan) -> None:
        self.health_url = plan.health_url
        self.base_url = self.health_url.removesuffix("/health")
        self._warmup = warmup_request(plan)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # A fresh connection per probe: a kept-alive one would fail once after each vLLM restart.
            # trust_env stays False: a proxy from HTTP_PROXY must never sit between us and localhost.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return self._session

    async def health(self, timeout: float) -> Probe:
        return await self._request("GET", self.health_url, None, timeout)

    async def warmup(self, timeout: float | None) -> Probe:
        path, body = self._warmup
        return await self._request("POST", self.base_url + path, body, timeout)

    async def _request(self, method: str, url: str, body: dict[str, Any] | None, timeout: float | None) -> Probe:
        try:
            async with self._client().request(
                method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                text = "" if response.status < 300 else (await response.text(errors="replace"))[:300]
                detail = f"HTTP {response.status}" + (f": {text}" if text else "")
                return Probe(200 <= response.status < 300, detail, response.status)
        except TimeoutError:
            return Probe(False, f"timed out after {timeout:g}s" if timeout else "timed out")
        except aiohttp.ClientConnectorError as error:
            return Probe(False, f"cannot connect: {error.os_error.strerror or error}")
        except (aiohttp.ClientError, OSError) as error:
            return Probe(False, f"{type(error).__name__}: {error}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
