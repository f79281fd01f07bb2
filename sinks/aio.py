"""Bridging the drivers' callback futures (completed on their own threads) to asyncio."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

Subscribe = Callable[[Callable[[Any], None], Callable[[BaseException], None]], None]


def callback_future(subscribe: Subscribe) -> asyncio.Future:
    """An asyncio future settled by ``subscribe(on_result, on_error)``'s callbacks."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(method, value):
        loop.call_soon_threadsafe(lambda: fut.done() or getattr(fut, method)(value))

    subscribe(lambda result: settle("set_result", result), lambda exc: settle("set_exception", exc))
    return fut
