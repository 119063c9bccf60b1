"""asyncio helpers for per-item fan-out on Python 3.11.

``TickBatcher`` turns the per-item calls that one handler batch makes in the same event-loop
tick into one call for the whole batch (one log entry, one KV write): the filter's duplicate
claims and the coordinator's ledger records use it.

``gather_eager`` is ``asyncio.gather`` for coroutines that often finish without ever waiting:
an item rejected by a cheap check, a cached verdict, a zero-cost engine in benchmarks. A Task
costs a few microseconds to create, schedule and complete, which is most of what such an item
costs, and every stage fanned out one Task per item (and one per engine call): 13-22% of every
stage's CPU in the orchestration benchmark (docs/benchmarks.md).

Python 3.12 solves this with ``asyncio.eager_task_factory``; this is the same idea for the 3.11
we run on. Each coroutine takes its first step right away, in a context of its own (as a Task's
would be); one that finishes there costs no Task at all, and one that suspends goes on in a Task
that resumes it, in the same context, where it left off. Cancellation reaches the awaited
future exactly as it would in a plain Task.

What differs from ``asyncio.gather``: the coroutines start before ``gather_eager`` returns
control to the event loop (in argument order), so code that counted on the caller running first
must not use it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Hashable,
    Iterable,
)
from typing import Any, Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
I = TypeVar("I")
R = TypeVar("R")


class TickBatcher(Generic[K, I, R]):
    """Gathers the ``submit(key, item)`` and ``submit_many(key, items)`` calls made until the
    event loop has gone round twice (the items of one handler batch, fanned out together, and
    the batches of concurrent fetch loops) into one ``flush(key, items)`` per key, which returns
    one result per item. Each caller gets its items' results, or the flush's error (a
    non-``Exception`` such as cancellation reaches callers as ``RuntimeError`` and is re-raised
    in the flush task)."""

    def __init__(self, flush: Callable[[K, list[I]], Awaitable[list[R]]]) -> None:
        self._flush = flush
        self._pending: dict[K, list[tuple[list[I], asyncio.Future]]] = {}
        self._tasks: set[asyncio.Task] = set()  # strong references while flushes run

    async def submit(self, key: K, item: I) -> R:
        return (await self.submit_many(key, [item]))[0]

    async def submit_many(self, key: K, items: list[I]) -> list[R]:
        """Results of ``items``, in order: one future for the call, not one per item."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        groups = self._pending.get(key)
        if groups is None:
            groups = self._pending[key] = []
            loop.call_soon(self._start, key)
        groups.append((items, fut))
        return await fut

    def _start(self, key: K) -> None:
        task = asyncio.ensure_future(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: K) -> None:
        await asyncio.sleep(0)  # one more tick: the rest of a gathered batch joins
        groups = self._pending.pop(key, [])
        if not groups:
            return
        try:
            results = await self._flush(key, [item for items, _ in groups for item in items])
            if len(results) != sum(len(items) for items, _ in groups):
                raise RuntimeError(f"flush returned {len(results)} results for "
                                   f"{sum(len(items) for items, _ in groups)} items")  # fmt: skip
        except BaseException as e:
            for _, fut in groups:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))
            if not isinstance(e, Exception):
                raise
            return
        at = 0
        for items, fut in groups:
            if not fut.done():
                fut.set_result(results[at : at + len(items)])
            at += len(items)


class _Suspend:
    """Hands what the inner coroutine yielded (a future, or None for a bare yield) to the Task
    running ``_resume``, so the Task waits on it exactly as it would for the inner coroutine."""

    __slots__ = ("yielded",)

    def __init__(self, yielded: Any) -> None:
        self.yielded = yielded

    def __await__(self) -> Generator[Any, None, None]:
        yield self.yielded


async def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    """Run ``coro`` on from the suspension point where it yielded ``yielded``."""
    while True:
        try:
            await _Suspend(yielded)
        except BaseException as e:  # noqa: BLE001 -- cancellation (or any throw) goes to the inner coroutine
            step = coro.throw, e
        else:
            step = coro.send, None
        try:
            yielded = step[0](step[1])  # type: ignore[operator]
        except StopIteration as stop:
            return stop.value


async def gather_eager(coros: Iterable[Coroutine[Any, Any, T]], *, return_exceptions: bool = False) -> list[T | Any]:
    """``asyncio.gather(*coros, return_exceptions=...)`` that runs each coroutine's first step
    eagerly and makes a Task only for those that suspend (module doc). Results keep the order of
    ``coros``. Without ``return_exceptions`` the first exception is raised once every coroutine
    has finished, where ``asyncio.gather`` raises it at once and leaves the others running."""
    results: list[Any] = []
    later: list[tuple[int, asyncio.Task]] = []
    first_error: BaseException | None = None
    for i, coro in enumerate(coros):
        ctx = contextvars.copy_context()
        try:
            yielded = ctx.run(coro.send, None)
        except StopIteration as stop:
            results.append(stop.value)
            continue
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 -- gather semantics: the item's outcome
            if not return_exceptions and first_error is None:
                first_error = e
            results.append(e)
            continue
        results.append(None)
        later.append((i, asyncio.get_running_loop().create_task(_resume(coro, yielded), context=ctx)))
    if later:
        done = await asyncio.gather(*(t for _, t in later), return_exceptions=True)
        for (i, _), r in zip(later, done):
            results[i] = r
            if isinstance(r, BaseException) and not return_exceptions and first_error is None:
                first_error = r
    if first_error is not None:
        raise first_error
    return results
