"""When to start vLLM again, and after how long. Pure: time and randomness come in as arguments.

`on-failure` and `always` restart the same exits: the launcher only ever restarts vLLM after an end
it did not ask for, and every such end is a failure, status 0 included (an engine death can end
vLLM's server with status 0). `always` is accepted because operators know the name from Docker.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from launcher.settings import SupervisorSettings


class RestartPolicy:
    def __init__(self, settings: SupervisorSettings, rand: Callable[[], float] = random.random) -> None:
        self._settings = settings
        self._rand = rand
        self._restarts: deque[float] = deque()  # monotonic times of the restarts inside the window
        self._failures_in_a_row = 0

    def next_delay(self, *, now: float, retryable: bool, was_ready: bool) -> float | None:
        """Seconds to wait before the next start, or None to give up.

        Exponential backoff with "equal jitter": a delay between half and all of the exponential
        value, so the delays still grow (tests and operators can see it) while a fleet of pods that
        failed together does not restart in lock-step. A start that reached ready resets the growth:
        that fault was not a boot loop.
        """
        settings = self._settings
        if settings.restart == "never" or not retryable:
            return None
        window_start = now - settings.restart_window
        while self._restarts and self._restarts[0] <= window_start:
            self._restarts.popleft()
        if len(self._restarts) >= settings.max_restarts:
            return None
        self._failures_in_a_row = 1 if was_ready else self._failures_in_a_row + 1
        # The exponent is capped so that slow failures outside the window never overflow a float.
        exponential = settings.backoff_initial * 2 ** min(self._failures_in_a_row - 1, 60)
        ceiling = min(settings.backoff_max, exponential)
        self._restarts.append(now)
        return float(ceiling / 2 + ceiling / 2 * self._rand())

    @property
    def restarts_in_window(self) -> int:
        return len(self._restarts)
