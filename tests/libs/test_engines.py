"""Engines: FakeEngine and the registry (unit), OpenAIEngine against a local stand-in HTTP
server, and VLLMEngine on the converted default model (marked `model`; one engine load for
the whole module)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import pytest_asyncio

from libs.engines.base import SamplingSpec
from libs.engines.fake import FakeEngine
from libs.engines.openai_engine import OpenAIEngine
from libs.engines.registry import EngineSpec, close_all, get_engine
from libs.errors import ConfigError, InvalidArgument, NotReady

# -- FakeEngine ----------------------------------------------------------------------------------


async def test_fake_default_echo_and_counts():
    engine = FakeEngine(text="one two three four")
    with pytest.raises(NotReady):
        await engine.generate("p", SamplingSpec())
    await engine.start()
    result = await engine.generate("a b c", SamplingSpec(n=2))
    assert [c.text for c in result.completions] == ["one two three four"] * 2
    assert [c.num_tokens for c in result.completions] == [4, 4]
    assert result.completions[0].finish_reason == "stop"
    assert result.prompt_tokens == 3
    assert engine.calls == [("a b c", SamplingSpec(n=2))]
    assert engine.generated_tokens == 8


async def test_fake_cpu_cost_burns_cpu_and_calls_are_bounded():
    from libs.engines import fake
    from libs.engines.factory import engine_spec
    from libs.settings import CommonSettings

    engine = FakeEngine(cpu=0.05)
    await engine.start()
    t0 = time.thread_time()
    await engine.generate("p", SamplingSpec())
    assert time.thread_time() - t0 >= 0.05
    for i in range(fake.MAX_RECORDED_CALLS + 10):
        engine._cpu = 0.0
        await engine.generate(f"p{i}", SamplingSpec())
    assert len(engine.calls) <= fake.MAX_RECORDED_CALLS and engine.calls[-1][0] == f"p{fake.MAX_RECORDED_CALLS + 9}"
    spec = engine_spec(CommonSettings(engine="fake", fake_cpu_seconds=0.01, fake_delay_seconds=0.5))
    assert dict(spec.options) == {"delay": 0.5, "cpu": 0.01}


async def test_fake_responder_limits_stops_and_logprobs():
    engine = FakeEngine(lambda prompt, params, i: f"answer {i} to {prompt} END trailing", logprobs={"x": -0.5, "y": -1.5})
    await engine.start()
    result = await engine.generate("Q", SamplingSpec(n=3, stop=(" END",), logprobs=1))
    assert [c.text for c in result.completions] == ["answer 0 to Q", "answer 1 to Q", "answer 2 to Q"]
    assert result.completions[0].top_logprobs == [{"x": -0.5}] * 4
    short = await engine.generate("Q", SamplingSpec(max_tokens=2))
    assert short.completions[0].text == "answer 0"
    assert short.completions[0].finish_reason == "length"
    assert short.completions[0].num_tokens == 2


async def test_fake_async_responder_delay_and_context_limit():
    async def responder(prompt, params, index):
        await asyncio.sleep(0)
        return prompt.upper()

    engine = FakeEngine(responder, delay=0.01, max_model_len=5)
    await engine.start()
    assert (await engine.generate("hi there", SamplingSpec())).completions[0].text == "HI THERE"
    with pytest.raises(InvalidArgument, match="context"):
        await engine.generate("a b c d e f", SamplingSpec())


async def test_fake_chatml():
    engine = FakeEngine(system_prompt="Be nice.")
    prefix = engine.chat_prefix()
    assert prefix == "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\n"
    prompt = engine.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == prefix + "Hi<|im_end|>\n<|im_start|>assistant\n"
    assert engine.stop_strings() == ["<|im_end|>"]
    assert FakeEngine(system_prompt=None).chat_prefix() == "<|im_start|>user\n"


# -- registry ------------------------------------------------------------------------------------


async def test_registry_shares_one_engine_per_spec():
    spec = EngineSpec(kind="fake", model="m1", options=(("text", "hello"),))
    try:
        engines = await asyncio.gather(*(get_engine(spec) for _ in range(10)))
        assert all(e is engines[0] for e in engines)
        assert engines[0].ready and engines[0].model_name == "m1"
        other = await get_engine(EngineSpec(kind="fake", model="m2"))
        assert other is not engines[0]
    finally:
        await close_all()
    assert not engines[0].ready
    fresh = await get_engine(spec)
    assert fresh is not engines[0]
    await close_all()


async def test_registry_rejects_bad_specs():
    with pytest.raises(ConfigError, match="kind"):
        EngineSpec(kind="tgi", model="x")
    with pytest.raises(ConfigError, match="base_url"):
        EngineSpec(kind="openai", model="x")
    with pytest.raises(ConfigError, match="options"):
        await get_engine(EngineSpec(kind="fake", model="x", options=(("no_such_option", 1),)))


# -- OpenAIEngine against a stand-in server ----------------------------------------------------


class _CompletionsStandIn(ThreadingHTTPServer):
    """A stand-in for an OpenAI-compatible `/v1/completions` endpoint (not a real vLLM server):
    answers from a script of status codes, then 200 with canned completions, and records
    every request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[int] = []
        self.requests: list[tuple[str, dict[str, str], dict]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _CompletionsStandIn

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status = self.server.script.pop(0) if self.server.script else 200
        if self.path != "/v1/completions":
            status = 404
        if status == 200:
            payload = _completion_payload(body)
        else:
            payload = {"error": {"message": f"scripted failure {status}", "type": "BadRequestError"}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def _completion_payload(body: dict) -> dict:
    choices = []
    for i in range(body.get("n", 1)):
        words = [f"w{i}"] * (i + 1) if body["max_tokens"] > 3 else ["cut"] * body["max_tokens"]
        choice = {
            "index": i,
            "text": " ".join(words),
            "finish_reason": "length" if body["max_tokens"] <= 3 else "stop",
            "logprobs": None,
        }
        if body.get("logprobs"):
            choice["logprobs"] = {
                "tokens": words,
                "token_logprobs": [-0.1] * len(words),
                "top_logprobs": [{w: -0.1, "alt": -2.0} for w in words],
                "text_offset": list(range(len(words))),
            }
        choices.append(choice)
    # Reverse order: clients must sort by index.
    total = sum(len(c["text"].split()) for c in choices)
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": body["model"],
        "choices": choices[::-1],
        "usage": {"prompt_tokens": 7, "completion_tokens": total, "total_tokens": 7 + total},
    }


@pytest.fixture
def standin():
    server = _CompletionsStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_openai_success_maps_fields(standin, monkeypatch):
    monkeypatch.setenv("SQ_OPENAI_API_KEY", "sekrit")
    engine = OpenAIEngine(standin.url + "/v1/", "smol")
    await engine.start()
    try:
        params = SamplingSpec(temperature=0.7, top_p=0.9, max_tokens=50, n=2, seed=5, stop=("<|im_end|>",), logprobs=2)
        result = await engine.generate("Hello", params)
    finally:
        await engine.close()
    path, headers, body = standin.requests[0]
    assert path == "/v1/completions"
    assert headers["authorization"] == "Bearer sekrit"
    assert body == {
        "model": "smol", "prompt": "Hello", "temperature": 0.7, "top_p": 0.9, "max_tokens": 50,
        "n": 2, "seed": 5, "stop": ["<|im_end|>"], "logprobs": 2,
    }  # fmt: skip
    assert [c.text for c in result.completions] == ["w0", "w1 w1"]
    assert [c.num_tokens for c in result.completions] == [1, 2]
    assert result.completions[1].top_logprobs == [{"w1": -0.1, "alt": -2.0}] * 2
    assert result.prompt_tokens == 7


async def test_openai_token_counts_without_logprobs(standin):
    engine = OpenAIEngine(standin.url, "smol", api_key="")
    await engine.start()
    try:
        result = await engine.generate("Hello", SamplingSpec(n=3, max_tokens=50))
        short = await engine.generate("Hello", SamplingSpec(max_tokens=2))
    finally:
        await engine.close()
    assert "authorization" not in standin.requests[0][1]
    # Only the total is reported; the split follows text length and adds up.
    assert sum(c.num_tokens for c in result.completions) == 6
    assert short.completions[0].finish_reason == "length"
    assert short.completions[0].num_tokens == 2


async def test_openai_retries_5xx_and_429(standin):
    standin.script = [503, 500, 429]
    engine = OpenAIEngine(standin.url, "smol", max_retries=3, backoff=0.01)
    await engine.start()
    try:
        result = await engine.generate("Hello", SamplingSpec(max_tokens=50))
    finally:
        await engine.close()
    assert result.completions[0].text == "w0"
    assert len(standin.requests) == 4


async def test_openai_gives_up_as_not_ready(standin):
    standin.script = [502, 502, 502]
    engine = OpenAIEngine(standin.url, "smol", max_retries=2, backoff=0.01)
    await engine.start()
    try:
        with pytest.raises(NotReady, match="502"):
            await engine.generate("Hello", SamplingSpec())
    finally:
        await engine.close()
    assert len(standin.requests) == 3


async def test_openai_4xx_is_invalid_argument_without_retry(standin):
    standin.script = [400]
    engine = OpenAIEngine(standin.url, "smol", max_retries=3, backoff=0.01)
    await engine.start()
    try:
        with pytest.raises(InvalidArgument, match="scripted failure 400"):
            await engine.generate("Hello", SamplingSpec())
    finally:
        await engine.close()
    assert len(standin.requests) == 1


async def test_openai_unreachable_is_not_ready():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = OpenAIEngine(f"http://127.0.0.1:{port}", "smol", max_retries=1, backoff=0.01)
    await engine.start()
    try:
        with pytest.raises(NotReady, match="cannot reach"):
            await engine.generate("Hello", SamplingSpec())
    finally:
        await engine.close()
    with pytest.raises(NotReady, match="not started"):
        await engine.generate("Hello", SamplingSpec())


async def test_openai_chat_template_needs_a_tokenizer(tmp_path):
    engine = OpenAIEngine("http://127.0.0.1:1", "smol")
    with pytest.raises(NotImplementedError, match="tokenizer"):
        engine.apply_chat_template([{"role": "user", "content": "Hi"}])

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        extra_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok.save_pretrained(tmp_path)
    engine = OpenAIEngine("http://127.0.0.1:1", "smol", tokenizer=str(tmp_path))
    await engine.start()
    try:
        assert engine.chat_prefix() == "<|im_start|>user\n"
        assert engine.stop_strings() == ["<|im_end|>"]
        assert engine.apply_chat_template([{"role": "user", "content": "Hi"}]).endswith("<|im_start|>assistant\n")
    finally:
        await engine.close()


# -- VLLMEngine on the default model (one load for all tests below) ----------------------------

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm_engine():
    from libs.engines.vllm_engine import VLLMEngine
    from libs.models.default_model import ensure_default_model

    path = await asyncio.to_thread(ensure_default_model)
    engine = VLLMEngine(path, served_name="SmolLM2-135M-Instruct", max_model_len=2048)
    await engine.start()
    yield engine
    await engine.close()


def _ask(engine, question: str) -> str:
    return engine.apply_chat_template([{"role": "user", "content": question}])


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_vllm_template_surface(vllm_engine):
    assert vllm_engine.ready and vllm_engine.model_name == "SmolLM2-135M-Instruct"
    assert vllm_engine.chat_prefix().endswith("<|im_end|>\n<|im_start|>user\n")
    assert vllm_engine.stop_strings() == ["<|im_end|>"]
    assert _ask(vllm_engine, "Hi").endswith("Hi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_vllm_concurrent_generate_keeps_loop_responsive(vllm_engine):
    questions = [f"What is {a} + {a * 3}? Answer briefly." for a in range(1, 9)]
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker():
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    params = SamplingSpec(temperature=0.7, top_p=0.95, max_tokens=32, stop=tuple(vllm_engine.stop_strings()))
    results = await asyncio.gather(*(vllm_engine.generate(_ask(vllm_engine, q), params) for q in questions))
    done.set()
    await tick
    assert len(results) == 8
    for result in results:
        (completion,) = result.completions
        assert completion.finish_reason in ("stop", "length")
        assert 0 < completion.num_tokens <= 32
        assert "<|im_end|>" not in completion.text
        assert result.prompt_tokens > 20
    assert max(gaps) < 0.5, f"event loop blocked for {max(gaps):.2f}s"


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_vllm_n_and_seed_reproducibility(vllm_engine):
    prompt = vllm_engine.chat_prefix()
    params = SamplingSpec(temperature=1.0, top_p=0.99, max_tokens=24, n=3, seed=1234)
    # Both measured requests meet the prompt in the prefix cache (a cold prompt takes other
    # kernels, whose sums differ in the last bits).
    await vllm_engine.generate(prompt, SamplingSpec(temperature=1.0, max_tokens=2, seed=7))
    first = await vllm_engine.generate(prompt, params)
    second = await vllm_engine.generate(prompt, params)
    texts = [c.text for c in first.completions]
    again = [c.text for c in second.completions]
    assert len(texts) == 3
    assert len(set(texts)) > 1, "the n samples of one request should differ"
    # The seed drives every sample, up to numerics: a draw that lands on a near-tie can flip a
    # later token (seen on the Intel draws of the CI machine, even with the cache warm: two of
    # three samples, after 12+ characters). So each repeat must start as its first run did,
    # while another seed's samples must not.
    def same_start(a: str, b: str) -> bool:
        return len(os.path.commonprefix([a, b])) >= min(12, len(a), len(b))

    assert all(same_start(a, b) for a, b in zip(texts, again)), (texts, again)
    other = await vllm_engine.generate(prompt, dataclasses.replace(params, seed=99))
    others = [c.text for c in other.completions]
    assert not all(same_start(a, b) for a, b in zip(texts, others)), (texts, others)


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_vllm_length_and_stop_strings(vllm_engine):
    prompt = _ask(vllm_engine, "Name three prime numbers.")
    short = await vllm_engine.generate(prompt, SamplingSpec(temperature=0.0, max_tokens=3))
    assert short.completions[0].finish_reason == "length"
    assert short.completions[0].num_tokens == 3

    full = await vllm_engine.generate(prompt, SamplingSpec(temperature=0.0, max_tokens=40))
    text = full.completions[0].text
    words = text.split()
    assert len(words) >= 4, text
    stop = " " + words[3]
    cut = await vllm_engine.generate(prompt, SamplingSpec(temperature=0.0, max_tokens=40, stop=(stop,)))
    assert cut.completions[0].finish_reason == "stop"
    assert cut.completions[0].text == text[: text.index(stop)]


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_vllm_logprobs(vllm_engine):
    result = await vllm_engine.generate(_ask(vllm_engine, "Say hello."), SamplingSpec(max_tokens=8, logprobs=3))
    completion = result.completions[0]
    assert len(completion.top_logprobs) == completion.num_tokens > 0
    for position in completion.top_logprobs:
        assert 3 <= len(position) <= 4  # top-3 plus the sampled token when it ranks lower
        assert all(isinstance(t, str) and lp <= 0.0 for t, lp in position.items())


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="module")
async def test_vllm_overlong_prompt_is_invalid_argument(vllm_engine):
    unit = "two plus two is four. "
    per_unit = vllm_engine.count_tokens(unit * 10) / 10
    prompt = unit * int(2100 / per_unit)
    assert vllm_engine.count_tokens(prompt) > 2048
    with pytest.raises(InvalidArgument, match="max_model_len=2048"):
        await vllm_engine.generate(prompt, SamplingSpec(max_tokens=4))
    # Near the limit, max_tokens shrinks to what fits (finish_reason "length") instead of failing.
    near_prompt = unit * int(2030 / per_unit)
    assert 1900 < vllm_engine.count_tokens(near_prompt) < 2040
    near = await vllm_engine.generate(near_prompt, SamplingSpec(temperature=0.0, max_tokens=100))
    assert near.prompt_tokens == vllm_engine.count_tokens(near_prompt)
    assert near.prompt_tokens + near.completions[0].num_tokens <= 2048
    # The engine is unharmed.
    after = await vllm_engine.generate(_ask(vllm_engine, "Hi"), SamplingSpec(max_tokens=4))
    assert after.completions[0].num_tokens > 0


async def test_scripted_math_world_is_selectable_from_settings():
    # engine=fake + model=scripted-math: services started from environment alone (the chart's
    # local run, benchmarks) get the scripted math world instead of a fixed sentence.
    from libs.engines.base import SamplingSpec
    from libs.engines.registry import SCRIPTED_MATH, EngineSpec, close_all, get_engine

    eng = await get_engine(EngineSpec(kind="fake", model=SCRIPTED_MATH))
    try:
        out = await eng.generate("Tom has 3 apples and buys 4 more.\nPut it in \\boxed{}.", SamplingSpec(seed=1))
        assert eng.model_name == "fake-math" and "\\boxed{7}" in out.completions[0].text
    finally:
        await close_all()
