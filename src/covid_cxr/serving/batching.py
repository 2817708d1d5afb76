"""Micro-batching: concurrent predict requests gathered for a few ms and run as one model call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]


class DirectRunner:
    """Run each request's batch on its own in a worker thread (batching off)."""

    def __init__(self, fn: PredictFn) -> None:
        self.fn = fn

    async def run(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, K) probabilities, off the event loop."""
        return await asyncio.to_thread(self.fn, x)

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def __aenter__(self) -> DirectRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class MicroBatcher(DirectRunner):
    """Gather the rows of concurrent requests for up to `max_wait_s` (or `max_batch` rows) into one call.

    Model calls run one at a time in a worker thread; requests that arrive meanwhile queue up and
    form the next batch. A request with `max_batch` rows or more runs on its own.

    Example:
        >>> batcher = MicroBatcher(predictor.predict_tensor, max_batch=16, max_wait_s=0.005)
        >>> await batcher.start(); probs = await batcher.run(x); await batcher.stop()
    """

    def __init__(self, fn: PredictFn, max_batch: int = 16, max_wait_s: float = 0.005) -> None:
        super().__init__(fn)
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the gathering loop on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="covid-cxr-micro-batcher")

    async def stop(self) -> None:
        """Stop the loop; requests still queued get an error instead of hanging."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("server shutting down"))

    async def run(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, K) probabilities, computed together with concurrent requests."""
        if self._queue is None or len(x) >= self.max_batch:
            return await super().run(x)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        return await future

    async def _loop(self) -> None:
        """Take a first request, gather more until full or timed out, run them, repeat."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            rows = len(items[0][0])
            deadline = loop.time() + self.max_wait_s
            while rows < self.max_batch and (timeout := deadline - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                items.append(item)
                rows += len(item[0])
            await self._dispatch(items)

    async def _dispatch(self, items: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        """One model call for all gathered rows; each request gets its slice (or the error)."""
        try:
            out = await asyncio.to_thread(self.fn, np.concatenate([x for x, _ in items]))
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which re-raises it
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        log.debug("micro-batch of %d rows from %d requests", len(out), len(items))
        start = 0
        for x, future in items:
            if not future.done():
                future.set_result(out[start : start + len(x)])
            start += len(x)


def make_runner(
    fn: PredictFn, batching: bool, max_batch: int = 16, max_wait_s: float = 0.005
) -> DirectRunner:
    """A MicroBatcher when `batching`, else a DirectRunner; use it as `async with runner:`."""
    return MicroBatcher(fn, max_batch, max_wait_s) if batching else DirectRunner(fn)
