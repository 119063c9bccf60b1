"""Engine backed by an OpenAI-compatible completions endpoint (a remote `vllm serve`, or a hosted
model), spoken over HTTP with httpx.

Prompts are sent as raw text to ``POST /v1/completions``: stages render chat templates
themselves (from a local copy of the model's tokenizer), exactly as they do for the in-process
engine, so both engine kinds see identical prompts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import Any

import httpx

from libs.engines import templates
from libs.engines.base import Completion, Engine, GenerationResult, SamplingSpec
from libs.errors import InvalidArgument, NotReady

log = logging.getLogger(__name__)

API_KEY_ENV = "SQ_OPENAI_API_KEY"
#: Statuses worth retrying: request timeout, rate limiting, transient server-side failures.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class OpenAIEngine(Engine):
    """Completions over HTTP.

    Args:
        base_url: server root (``http://host:8000``) or its ``/v1`` URL.
        model: model name the server serves (sent as ``model``; recorded in provenance).
        api_key: bearer token (default: env SQ_OPENAI_API_KEY; none sent when empty).
        tokenizer: local tokenizer directory used for chat templating and per-completion token
            counts (optional; without it `apply_chat_template` is unavailable).
        timeout: seconds per HTTP request.
        max_retries: retries after the first attempt for 408/429/500/502/503/504 and connection
            errors; when they run out the call raises NotReady.
        backoff: first retry delay in seconds; doubles per retry (with jitter), capped at 30s.
            A numeric ``Retry-After`` header overrides it.
        max_connections: connection-pool size (bounds in-flight requests per engine).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        tokenizer: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_connections: int = 256,
    ) -> None:
        if not base_url:
            raise InvalidArgument("OpenAIEngine needs a base_url")
        root = base_url.rstrip("/")
        self.completions_url = root + ("/completions" if root.endswith("/v1") else "/v1/completions")
        self.model_name = model
        self._api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        self._tokenizer_path = tokenizer
        self._tokenizer: Any = None
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_connections = max_connections
        self._client: httpx.AsyncClient | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        if self._client is not None:
            return
        if self._tokenizer_path and self._tokenizer is None:
            self._tokenizer = await asyncio.to_thread(_load_tokenizer, self._tokenizer_path)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self._timeout, connect=min(10.0, self._timeout)),
            limits=httpx.Limits(max_connections=self._max_connections, max_keepalive_connections=32),
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- generation -----------------------------------------------------------------------------

    def _body(self, prompt: str, params: SamplingSpec) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "prompt": prompt,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "n": params.n,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs:
            body["logprobs"] = params.logprobs
        return body

    async def generate(self, prompt: str, params: SamplingSpec) -> GenerationResult:
        if self._client is None:
            raise NotReady(f"OpenAI engine for {self.model_name} is not started")
        data = await self._post(self._body(prompt, params))
        try:
            return self._parse(data, params)
        except (KeyError, TypeError, ValueError) as exc:
            raise NotReady(f"malformed completions response from {self.completions_url}: {exc}") from exc

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self._client is not None
        attempt = 0
        while True:
            delay: float | None = None
            try:
                response = await self._client.post(self.completions_url, json=body)
            except httpx.TransportError as exc:  # connect/read errors and timeouts
                failure = f"cannot reach {self.completions_url}: {type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise NotReady(f"non-JSON response from {self.completions_url}") from exc
                detail = _error_detail(response)
                if response.status_code not in RETRYABLE_STATUS:
                    if response.status_code < 500:
                        raise InvalidArgument(
                            f"{self.completions_url} rejected the request ({response.status_code}): {detail}"
                        )
                    raise NotReady(f"{self.completions_url} failed ({response.status_code}): {detail}")
                failure = f"{self.completions_url} answered {response.status_code}: {detail}"
                delay = _retry_after(response)
            if attempt >= self._max_retries:
                raise NotReady(f"{failure} (gave up after {attempt + 1} attempts)")
            if delay is None:
                delay = min(30.0, self._backoff * (2**attempt)) * (0.5 + random.random() / 2)
            log.warning("%s; retrying in %.2fs", failure, delay)
            await asyncio.sleep(delay)
            attempt += 1

    def _parse(self, data: dict[str, Any], params: SamplingSpec) -> GenerationResult:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        completions = []
        for choice in choices:
            text = choice.get("text") or ""
            logprobs = choice.get("logprobs") or {}
            top = [dict(entry or {}) for entry in (logprobs.get("top_logprobs") or [])] if params.logprobs else []
            tokens = logprobs.get("tokens")
            completions.append(
                Completion(
                    text=text,
                    finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                    num_tokens=len(tokens) if tokens is not None else -1,
                    top_logprobs=top,
                )
            )
        self._fill_token_counts(completions, int(usage.get("completion_tokens") or 0))
        return GenerationResult(completions=completions, prompt_tokens=int(usage.get("prompt_tokens") or 0))

    def _fill_token_counts(self, completions: list[Completion], total: int) -> None:
        """Per-completion token counts: the server reports only their sum (`usage`)."""
        missing = [c for c in completions if c.num_tokens < 0]
        if not missing:
            return
        if len(completions) == 1:
            completions[0].num_tokens = total
            return
        if self._tokenizer is not None:
            for c in missing:
                c.num_tokens = len(self._tokenizer.encode(c.text, add_special_tokens=False))
            return
        # Apportion what is left of the total by text length, so the counts still add up.
        remaining = max(0, total - sum(c.num_tokens for c in completions if c.num_tokens >= 0))
        chars = sum(len(c.text) for c in missing) or len(missing)
        assigned = 0
        for i, c in enumerate(missing):
            share = remaining - assigned if i == len(missing) - 1 else round(remaining * (len(c.text) or 1) / chars)
            c.num_tokens = max(0, share)
            assigned += c.num_tokens

    # -- chat template --------------------------------------------------------------------------

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self._tokenizer_path:
                raise NotReady("OpenAIEngine is not started; its tokenizer is not loaded yet")
            raise NotImplementedError(
                f"OpenAIEngine({self.model_name!r}) has no local tokenizer, so it cannot render chat "
                "templates; pass tokenizer=<model directory> (registry option 'tokenizer')"
            )
        return self._tokenizer

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return templates.chat_prompt(self._require_tokenizer(), messages, add_generation_prompt)

    def chat_prefix(self) -> str:
        return templates.scratch_prefix(self._require_tokenizer())

    def stop_strings(self) -> list[str]:
        return templates.end_of_turn_stops(self._require_tokenizer())


def _load_tokenizer(path: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:500]
        return str(error)[:500]
    return str(body)[:500]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(30.0, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None
