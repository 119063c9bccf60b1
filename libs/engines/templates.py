"""Chat-template helpers that work from a Hugging Face tokenizer's own template.

Generation from scratch (METHOD §3) prompts a model with only the template text that comes
before the user's words, and stops where the template would close the turn. Both are derived
here by rendering the template around sentinel strings, so any model's template works without
per-model tables.
"""

from __future__ import annotations

from typing import Any

# Unlikely to occur in a template, survives `trim`, and has no characters Jinja escapes.
_SENTINEL_USER = "SQSENTINELUSER7F3A"
_SENTINEL_ASSISTANT = "SQSENTINELASSISTANT7F3A"


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):  # some tokenizer versions wrap the rendering
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Render `messages` with the tokenizer's chat template (text, not token ids)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template")
    return _render(tokenizer, messages, add_generation_prompt)


def scratch_prefix(tokenizer: Any) -> str:
    """The template text up to where a user's message would begin.

    Includes whatever the template puts first (BOS, a default system turn) and the user-turn
    header; for SmolLM2 that is ``<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n``.
    """
    text = chat_prompt(tokenizer, [{"role": "user", "content": _SENTINEL_USER}], add_generation_prompt=False)
    cut = text.find(_SENTINEL_USER)
    if cut < 0:
        raise ValueError("the chat template does not render the user's message verbatim; cannot find its prefix")
    return text[:cut]


def _special_tokens(tokenizer: Any) -> list[str]:
    tokens: set[str] = set(getattr(tokenizer, "all_special_tokens", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for tok in added.values():
        content = getattr(tok, "content", None)
        if content and getattr(tok, "special", True):
            tokens.add(content)
    # Longest first so a token that is a prefix of another never wins.
    return sorted((t for t in tokens if t), key=len, reverse=True)


def _closing_marker(suffix: str, specials: list[str]) -> str | None:
    """The first thing after a message's text: a special token, else its first non-blank line."""
    rest = suffix.lstrip()
    if not rest:
        return None
    for tok in specials:
        if rest.startswith(tok):
            return tok
    line = rest.split("\n", 1)[0].strip()
    return line or None


def end_of_turn_stops(tokenizer: Any) -> list[str]:
    """Strings that end a turn in this template, most specific first.

    * what closes a user turn (``<|im_end|>`` in ChatML; for templates without a closing
      marker, the next turn's header such as ``Assistant:``), so from-scratch generation
      stops when the model finishes writing a question;
    * what closes an assistant turn (often the EOS token);
    * the tokenizer's EOS token.
    """
    specials = _special_tokens(tokenizer)
    stops: list[str] = []

    def add(marker: str | None) -> None:
        if marker and marker not in stops:
            stops.append(marker)

    if getattr(tokenizer, "chat_template", None) is not None:
        text = _render(tokenizer, [{"role": "user", "content": _SENTINEL_USER}], add_generation_prompt=True)
        cut = text.find(_SENTINEL_USER)
        if cut >= 0:
            add(_closing_marker(text[cut + len(_SENTINEL_USER) :], specials))
        try:
            text = _render(
                tokenizer,
                [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL_ASSISTANT}],
                add_generation_prompt=False,
            )
        except Exception:  # templates that refuse to render a finished assistant turn
            text = ""
        cut = text.find(_SENTINEL_ASSISTANT)
        if cut >= 0:
            add(_closing_marker(text[cut + len(_SENTINEL_ASSISTANT) :], specials))
    eos = getattr(tokenizer, "eos_token", None)
    if isinstance(eos, str):
        add(eos)
    return stops
