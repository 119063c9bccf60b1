"""RecordingEngine and replay (libs/engines/recording.py) over the fake engine: what the
efficiency benchmark relies on (every call recorded with its parameters, counts and times;
a replay sends the same calls again)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from libs.engines.base import SamplingSpec
from libs.engines.fake import FakeEngine
from libs.engines.recording import (
    EngineCall,
    RecordingEngine,
    busy_window,
    concurrency_profile,
    replay,
)
from libs.errors import InvalidArgument


async def test_records_calls_and_delegates():
    inner = FakeEngine(lambda prompt, params, i: f"{prompt} {params.seed} {i}", model_name="m")
    ticks = itertools.count()
    rec = RecordingEngine(inner, clock=lambda: float(next(ticks)))
    await rec.start()
    assert rec.ready and rec.model_name == "m"
    assert rec.stop_strings() == inner.stop_strings()
    assert rec.apply_chat_template([{"role": "user", "content": "hi"}]) == inner.apply_chat_template(
        [{"role": "user", "content": "hi"}]
    )
    assert rec.chat_prefix() == inner.chat_prefix()
    assert rec.generated_tokens == 0  # other attributes come from the wrapped engine

    params = SamplingSpec(n=2, seed=7, max_tokens=2)
    out = await rec.generate("a b c", params)
    assert [c.text for c in out.completions] == ["a b", "a b"]
    (call,) = rec.calls
    assert call == EngineCall("a b c", params, 0.0, 1.0, 3, (2, 2), ("length", "length"))
    assert call.generated_tokens == 4 and call.seconds == 1.0
    assert inner.calls == [("a b c", params)]

    with pytest.raises(InvalidArgument):
        await rec.generate("x", SamplingSpec(max_tokens=0))
    assert rec.calls[-1].error.startswith("InvalidArgument") and rec.calls[-1].completion_tokens == ()
    await rec.close()
    assert not rec.ready


async def test_replay_sends_the_same_calls_at_once():
    source = RecordingEngine(FakeEngine(lambda p, s, i: "one two three"))
    await source.start()
    # Recorded out of order on purpose: replay submits in the order the calls started.
    await asyncio.gather(
        source.generate("second", SamplingSpec(seed=2)),
        source.generate("first", SamplingSpec(seed=1, n=3)),
    )
    source.calls.reverse()
    source.calls.append(EngineCall("failed", SamplingSpec(), 0.0, 0.0, error="NotReady: x"))

    target = FakeEngine(lambda p, s, i: "one two three", delay=0.05)
    await target.start()
    calls = await replay(target, source.calls)
    assert [p for p, _ in target.calls] == ["second", "first"]  # started order; errors skipped
    assert sorted(c.generated_tokens for c in calls) == [3, 9]
    start, end = busy_window(calls)
    # All submitted at once: the two 50 ms calls overlap instead of queueing.
    assert 0.04 < end - start < 0.09
    # At most one at a time: they queue.
    serial = await replay(target, source.calls, max_concurrency=1, order="as_given")
    serial.sort(key=lambda c: c.started)
    assert [c.prompt for c in serial] == ["first", "second"]
    assert serial[0].ended <= serial[1].started
    with pytest.raises(ValueError):
        await replay(target, calls, order="random")


def test_busy_window_and_concurrency_profile():
    def call(t0, t1, n=1):
        return EngineCall("p", SamplingSpec(n=n), t0, t1)

    assert busy_window([]) == (0.0, 0.0)
    calls = [call(0, 2), call(1, 3, n=2), call(5, 6)]
    assert busy_window(calls) == (0, 6)
    prof = concurrency_profile(calls)
    # in flight: 1 seq on [0,1), 3 on [1,2), 2 on [2,3), idle on [3,5), 1 on [5,6)
    assert prof["mean_in_flight"] == pytest.approx((1 + 3 + 2 + 0 + 0 + 1) / 6)
    assert prof["idle_share"] == pytest.approx(2 / 6)
    assert prof["max_in_flight"] == 3
    wider = concurrency_profile(calls, start=-2, end=6)
    assert wider["idle_share"] == pytest.approx(4 / 8)
    assert concurrency_profile([]) == {"mean_in_flight": 0.0, "idle_share": 0.0, "max_in_flight": 0}
