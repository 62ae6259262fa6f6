"""launcher.restart: backoff growth, cap, jitter bounds, the restart window, what is never retried."""

from __future__ import annotations

import pytest

from launcher.restart import RestartPolicy
from launcher.settings import SupervisorSettings


def policy(rand: float = 1.0, **settings) -> RestartPolicy:
    return RestartPolicy(SupervisorSettings(**settings), rand=lambda: rand)


def test_never_and_unretryable_give_up():
    assert policy(restart="never").next_delay(now=0, retryable=True, was_ready=False) is None
    assert policy(restart="always").next_delay(now=0, retryable=False, was_ready=False) is None


def test_delays_double_up_to_the_cap():
    p = policy(backoff_initial=1, backoff_max=5, max_restarts=10)
    delays = [p.next_delay(now=i, retryable=True, was_ready=False) for i in range(5)]
    assert delays == [1, 2, 4, 5, 5]


@pytest.mark.parametrize(("rand", "expected"), [(0.0, [0.5, 1, 2]), (0.5, [0.75, 1.5, 3])])
def test_equal_jitter_keeps_delays_growing(rand, expected):
    p = policy(rand=rand, backoff_initial=1, backoff_max=100, max_restarts=10)
    assert [p.next_delay(now=i, retryable=True, was_ready=False) for i in range(3)] == expected


def test_gives_up_after_max_restarts_within_the_window_only():
    p = policy(max_restarts=2, restart_window=10)
    assert p.next_delay(now=0, retryable=True, was_ready=False) is not None
    assert p.next_delay(now=1, retryable=True, was_ready=False) is not None
    assert p.next_delay(now=2, retryable=True, was_ready=False) is None
    # The first restarts have left the window: failures that far apart are not a crash loop.
    assert p.next_delay(now=11.5, retryable=True, was_ready=False) is not None


def test_zero_max_restarts_never_restarts():
    assert policy(max_restarts=0).next_delay(now=0, retryable=True, was_ready=False) is None


def test_a_start_that_became_ready_resets_the_growth():
    p = policy(backoff_initial=1, backoff_max=100, max_restarts=10)
    assert [p.next_delay(now=i, retryable=True, was_ready=False) for i in range(3)] == [1, 2, 4]
    assert p.next_delay(now=4, retryable=True, was_ready=True) == 1


def test_slow_failures_never_overflow():
    p = policy(backoff_initial=1, backoff_max=30, max_restarts=1, restart_window=1)
    for i in range(2000):
        assert p.next_delay(now=i * 10, retryable=True, was_ready=False) == 30 or i < 5
