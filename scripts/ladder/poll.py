"""The one polling loop (tenacity): a condition, a deadline, a growing pause between tries."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_exponential

T = TypeVar("T")


def poll(check: Callable[[], T], timeout: float, max_delay: float = 1.0) -> T:
    """Call ``check`` until it returns something truthy or ``timeout`` seconds have passed.

    Returns its last value (falsy on timeout: the caller names what did not happen).
    Pauses grow from 0.1 s to ``max_delay``; an exception from ``check`` propagates.
    """
    retrying = Retrying(stop=stop_after_delay(max(timeout, 0)), retry=retry_if_result(lambda r: not r),
                        wait=wait_exponential(multiplier=0.1, exp_base=1.5, max=max_delay))
    try:
        return retrying(check)
    except RetryError as err:
        return err.last_attempt.result()


def tcp_open(host: str, port: int) -> bool:
    """Something accepts connections at host:port (e.g. a Ray GCS)."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
