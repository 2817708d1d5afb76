"""Bounded work per worker: a few requests decode (or explain) at once, a few wait, the rest get 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import HTTPException

RETRY_AFTER_S = 1


class Slots:
    """At most `running` holders at once and `waiting` queued behind them; 503 + Retry-After beyond.

    Memory then stays bounded by `running` decoded images, whatever the number of clients.

    Example:
        >>> decodes = Slots("decode", running=2, waiting=16)
        >>> async with decodes.slot(): ...
    """

    def __init__(self, what: str, running: int, waiting: int) -> None:
        self.what = what
        self.waiting_limit = waiting
        self._semaphore = asyncio.Semaphore(running)
        self._waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the `async with`; 503 when the queue is full."""
        if self._semaphore.locked() and self._waiting >= self.waiting_limit:
            raise HTTPException(
                503,
                f"server busy: too many {self.what} requests at once; retry in {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._semaphore.release()
