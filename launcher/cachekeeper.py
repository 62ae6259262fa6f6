"""The running launcher's side of the graph-compile cache: prune and take the plan's entry before the
first start, mark it complete once vLLM is ready (and warm), throw it away once when a start fails
because of it. Blocking file work runs in a thread so signals and probes are never held up."""

from __future__ import annotations

import asyncio
from typing import Any

from launcher.cache import CacheDir, CacheError, Lease
from launcher.plan import Plan

# Diagnoses (launcher/failures.py) that mean the cache, not the configuration, broke the start.
CACHE_FAILURES = frozenset({"stale_graph_cache"})
POLL = 1.0  # seconds between tries while another launcher builds the same entry


class CacheKeeper:
    def __init__(self, plan: Plan, log: Any) -> None:
        self.plan = plan
        self.log = log
        self.lease: Lease | None = None
        self.recovered = False

    @property
    def manifest(self) -> dict[str, Any]:
        assert self.plan.cache is not None
        return {
            "model": self.plan.model,
            "profiles": list(self.plan.profiles),
            "dialect": self.plan.dialect,
            "inputs": self.plan.cache.inputs,
        }

    def status(self) -> dict[str, Any] | None:
        if self.plan.cache is None:
            return None
        return {
            "fingerprint": self.plan.cache.fingerprint,
            "dir": self.plan.cache.data,
            "state": self.lease.state if self.lease else "none",
            "reused": bool(self.lease and self.lease.reused),
            "recovered": self.recovered,
        }

    async def take(self, stop: asyncio.Event) -> bool:
        """Prune, then take the entry (waiting while another launcher builds it). False: give up."""
        spec = self.plan.cache
        if spec is None:
            return True
        cache = CacheDir(spec.root)
        if spec.max_entries is not None or spec.max_bytes is not None:
            limit = spec.max_entries
            if limit is not None and not (cache.root / spec.fingerprint).exists():
                limit -= 1  # room for the entry this start is about to build
            removed = await asyncio.to_thread(
                cache.prune,
                max_entries=limit,
                max_bytes=spec.max_bytes,
                keep=frozenset({spec.fingerprint}),
            )
            for info in removed:
                self.log.info("cache_pruned", fingerprint=info.fingerprint, size_bytes=info.size, state=info.state)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.wait
        waited = False
        while True:
            try:
                self.lease = await asyncio.to_thread(cache.acquire, spec.fingerprint, self.manifest, wait=0)
                break
            except CacheError as exc:
                if exc.exit_code != 3 or loop.time() >= deadline:
                    self.log.error(
                        "cache_unavailable",
                        fingerprint=spec.fingerprint,
                        error=str(exc),
                        fix="wait for the other launcher, or give this one its own LAUNCH_CACHE_DIR",
                    )
                    return False
                if not waited:
                    self.log.info("cache_waiting", fingerprint=spec.fingerprint, why=str(exc), wait_s=spec.wait)
                    waited = True
                try:
                    await asyncio.wait_for(stop.wait(), POLL)
                    return False  # asked to stop while waiting
                except TimeoutError:
                    continue
            except OSError as exc:
                self.log.error(
                    "cache_unavailable",
                    fingerprint=spec.fingerprint,
                    error=str(exc),
                    fix="make LAUNCH_CACHE_DIR a writable directory (a volume), or unset it",
                )
                return False
        lease = self.lease
        if lease.discarded:
            self.log.warning(
                "cache_discarded",
                fingerprint=spec.fingerprint,
                why="an earlier launcher died while building this entry; building it again",
            )
        self.log.info(
            "cache_entry",
            fingerprint=spec.fingerprint,
            state=lease.state,
            reused=lease.reused,
            dir=str(lease.data),
        )
        return True

    async def ready(self) -> None:
        """vLLM is ready (and warm, when the profile warms up): the entry can be trusted from now on."""
        if self.lease is None or self.lease.state == "complete":
            return
        await asyncio.to_thread(self.lease.mark_complete)
        self.log.info("cache_complete", fingerprint=self.lease.fingerprint, dir=str(self.lease.data))

    async def recover(self, reason: str, was_ready: bool) -> bool:
        """A start failed because of the cache: discard the entry and allow one retry from clean."""
        if self.lease is None or was_ready or reason not in CACHE_FAILURES or self.recovered:
            return False
        self.recovered = True
        await asyncio.to_thread(self.lease.rebuild, self.manifest)
        self.log.warning(
            "cache_discarded",
            fingerprint=self.lease.fingerprint,
            why=f"vLLM failed at start-up with {reason}; retrying once with an empty entry",
        )
        return True

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
