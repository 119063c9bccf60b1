"""gather_eager: asyncio.gather's results, with a Task only for coroutines that suspend."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from libs.aio import gather_eager

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_aio_var", default="unset")


async def _now(x):
    return x * 2


async def _later(x, delay=0.01):
    await asyncio.sleep(delay)
    return x * 3


async def _fail_now(msg):
    raise ValueError(msg)


async def _fail_later(msg):
    await asyncio.sleep(0.01)
    raise KeyError(msg)


async def test_results_keep_order_and_only_suspending_coroutines_get_a_task():
    created: list[object] = []
    loop = asyncio.get_running_loop()
    loop.set_task_factory(lambda lp, coro, **kw: created.append(coro) or asyncio.Task(coro, loop=lp, **kw))
    try:
        out = await gather_eager([_now(1), _later(2), _now(3), _later(4, 0.0)])
    finally:
        loop.set_task_factory(None)
    assert out == [2, 6, 6, 12]
    assert len(created) == 2  # the two that slept; the others finished in their first step


async def test_bare_yield_and_future_results_pass_through():
    fut = asyncio.get_running_loop().create_future()

    async def waits():
        await asyncio.sleep(0)  # a bare yield
        return await fut

    async def resolve():
        await asyncio.sleep(0.01)
        fut.set_result("done")
        return "resolved"

    assert await gather_eager([waits(), resolve()]) == ["done", "resolved"]


async def test_exceptions_are_results_with_return_exceptions():
    out = await gather_eager([_now(1), _fail_now("a"), _fail_later("b"), _later(2)], return_exceptions=True)
    assert out[0] == 2 and out[3] == 6
    assert isinstance(out[1], ValueError) and str(out[1]) == "a"
    assert isinstance(out[2], KeyError)


async def test_without_return_exceptions_the_first_error_is_raised_after_all_finished():
    finished = []

    async def slow_ok():
        await asyncio.sleep(0.02)
        finished.append("slow")
        return 1

    with pytest.raises(ValueError, match="boom"):
        await gather_eager([_fail_now("boom"), slow_ok()])
    assert finished == ["slow"]  # nothing is left running behind the caller's back
    with pytest.raises(KeyError):
        await gather_eager([_later(1), _fail_later("late")])


async def test_an_exception_caught_inside_the_coroutine_across_a_suspension():
    async def recovers():
        try:
            await _fail_later("inner")
        except KeyError:
            return "recovered"

    assert await gather_eager([recovers()]) == ["recovered"]


async def test_cancelling_the_caller_cancels_what_is_awaited():
    started = asyncio.Event()
    cancelled = []

    async def blocks():
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    task = asyncio.ensure_future(gather_eager([blocks(), _now(1)]))
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == [True]


async def test_each_coroutine_runs_in_a_context_of_its_own():
    async def sets(value):
        VAR.set(value)
        await asyncio.sleep(0.001)
        return VAR.get()

    VAR.set("caller")
    assert await gather_eager([sets("a"), sets("b")]) == ["a", "b"]
    assert VAR.get() == "caller"  # the eager first steps did not leak into the caller


async def test_empty_and_generator_input():
    assert await gather_eager([]) == []
    assert await gather_eager(_now(i) for i in range(3)) == [0, 2, 4]


async def test_tick_batcher_makes_one_flush_per_key_per_gathered_batch():
    from libs.aio import TickBatcher

    flushes: list[tuple[str, list[int]]] = []

    async def flush(key, items):
        flushes.append((key, items))
        await asyncio.sleep(0.001)
        return [f"{key}:{i}" for i in items]

    b = TickBatcher(flush)
    out = await asyncio.gather(*(b.submit("a", i) for i in range(5)), b.submit("b", 9))
    assert out == ["a:0", "a:1", "a:2", "a:3", "a:4", "b:9"]
    assert sorted(flushes) == [("a", [0, 1, 2, 3, 4]), ("b", [9])]
    assert await b.submit("a", 7) == "a:7" and len(flushes) == 3


async def test_tick_batcher_hands_the_flush_error_to_every_caller():
    from libs.aio import TickBatcher

    async def flush(key, items):
        raise ConnectionError("down")

    b = TickBatcher(flush)
    out = await asyncio.gather(*(b.submit("k", i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(e, ConnectionError) for e in out)


async def test_tick_batcher_submit_many_joins_the_same_flush_and_keeps_order():
    from libs.aio import TickBatcher

    flushes: list[list[int]] = []

    async def flush(key, items):
        flushes.append(list(items))
        return [i * 10 for i in items]

    b = TickBatcher(flush)
    many, one, empty = await asyncio.gather(b.submit_many("k", [1, 2, 3]), b.submit("k", 4), b.submit_many("k", []))
    assert (many, one, empty) == ([10, 20, 30], 40, [])
    assert flushes == [[1, 2, 3, 4]]  # one flush for both callers; the empty call made none


async def test_tick_batcher_rejects_a_flush_with_the_wrong_number_of_results():
    from libs.aio import TickBatcher

    async def flush(key, items):
        return items[:-1]

    b = TickBatcher(flush)
    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        await b.submit_many("k", [1, 2, 3])
