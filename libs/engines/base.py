"""Engine contract shared by every stage that talks to a language model.

An engine turns prompts (already rendered with the model's chat template, or a bare
template prefix for from-scratch generation) into completions. Stages never build
engines themselves: they get one from :func:`libs.engines.registry.get_engine`, so a
process that hosts several stages on the same model holds exactly one engine for it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling parameters, engine-agnostic (mapped onto vLLM / OpenAI fields)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Number of top log-probabilities to return per generated token (0 = none).
    logprobs: int = 0


@dataclass
class Completion:
    """One generated sequence."""

    text: str
    # "stop" (EOS or stop string) or "length" (hit max_tokens).
    finish_reason: str
    num_tokens: int
    # Per generated token: {token_text: logprob} of the top-k alternatives (only when requested).
    top_logprobs: list[dict[str, float]] = field(default_factory=list)


@dataclass
class GenerationResult:
    """All `n` completions for one prompt, plus the prompt's token count."""

    completions: list[Completion]
    prompt_tokens: int = 0


class Engine(abc.ABC):
    """An inference engine. Implementations must be safe to call concurrently from many
    coroutines (gRPC handlers and queue workers share one engine)."""

    #: Model identifier recorded in provenance.
    model_name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Load weights / open connections. Idempotent."""

    @abc.abstractmethod
    async def generate(self, prompt: str, params: SamplingSpec) -> GenerationResult:
        """Generate `params.n` completions for one prompt."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release resources. Idempotent."""

    def chat_prefix(self) -> str:  # pragma: no cover - overridden where a tokenizer exists
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        return True

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render chat messages with the model's own template."""
        raise NotImplementedError

    def stop_strings(self) -> list[str]:  # pragma: no cover - overridden where a tokenizer exists
        """The template's end-of-turn markers (e.g. ``<|im_end|>``, EOS): what from-scratch
        generation passes as `SamplingSpec.stop` to end at the close of the user turn."""
        raise NotImplementedError
