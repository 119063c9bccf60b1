"""Solvability-judge prompts, one per model family (``SQ_JUDGE_PROMPT_FAMILY``).

* ``chatml`` (Qwen, SmolLM and other ``<|im_start|>`` templates): a reviewer system turn, the
  instruction in the user turn, and a last line ``Verdict: Yes`` / ``Verdict: No``;
* ``deepseek`` (DeepSeek-Math / -V2 / -V3 / R1 templates: ``User: ... Assistant:`` or
  ``<｜User｜>``): no system turn (DeepSeek's chat models are tuned without one) and the
  instruction style those models were trained on, "reason step by step, and put your final
  answer within \\boxed{}", with ``\\boxed{Yes}`` / ``\\boxed{No}`` as the verdict;
* ``generic``: the instruction as a single user turn, or as plain text when the engine has no
  chat template.

``auto`` renders a probe message with the engine's own chat template and looks for the family's
markers, then falls back to the model name, then to ``generic``. Every family's verdict is read
by :func:`services.filter.checks.parse_verdict`; ``force_suffix`` is what the forced second step
appends after the reasoning so that the next token is the verdict word.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger("services.filter.prompts")

FAMILIES = ("chatml", "deepseek", "generic")

JUDGE_INSTRUCTION = (
    "You check math problems. Decide whether the problem below is a real math problem that can be "
    "solved from the information it gives (no missing conditions, no contradictions). Think step by "
    "step in a few sentences, then finish with a last line that is exactly 'Verdict: Yes' or "
    "'Verdict: No'.\n\nProblem:\n{question}"
)
CHATML_SYSTEM = (
    "You are a careful mathematics teacher who reviews problems before they are given to students."
)
DEEPSEEK_INSTRUCTION = (
    "Problem:\n{question}\n\n"
    "Is the problem above a real math problem that can be solved from the information it gives, with no "
    "missing conditions and no contradictions? Please reason step by step, and put your final verdict, "
    "Yes or No, within \\boxed{{}}."
)
FORCE_SUFFIX = {"chatml": "\nVerdict:", "generic": "\nVerdict:", "deepseek": "\nThe final verdict is \\boxed{"}

_SENTINEL = "SQJUDGEPROBE7F3A"
_DEEPSEEK_MARKERS = ("<｜User｜>", "<｜Assistant｜>", "<｜begin▁of▁sentence｜>")
_DEEPSEEK_PLAIN = re.compile(rf"User:\s*{_SENTINEL}\s*\n\s*\n?Assistant:")


@dataclass(frozen=True)
class JudgePrompt:
    family: str
    text: str
    force_suffix: str


def detect_family(engine) -> str:
    """The prompt family of ``engine``'s model: chat-template markers first, then the model name."""
    try:
        rendered = engine.apply_chat_template([{"role": "user", "content": _SENTINEL}])
    except Exception:  # no tokenizer / no template: only the name can tell
        rendered = ""
    if "<|im_start|>" in rendered:
        return "chatml"
    if any(m in rendered for m in _DEEPSEEK_MARKERS) or _DEEPSEEK_PLAIN.search(rendered):
        return "deepseek"
    name = str(getattr(engine, "model_name", "") or "").lower()
    if "deepseek" in name:
        return "deepseek"
    if any(k in name for k in ("qwen", "smollm", "chatml")):
        return "chatml"
    return "generic"


def judge_prompt(engine, family: str, question: str) -> JudgePrompt:
    """The rendered judge prompt for ``question`` in ``family`` (not ``auto``: resolve it first)."""
    if family == "deepseek":
        messages = [{"role": "user", "content": DEEPSEEK_INSTRUCTION.format(question=question)}]
    elif family == "chatml":
        messages = [
            {"role": "system", "content": CHATML_SYSTEM},
            {"role": "user", "content": JUDGE_INSTRUCTION.format(question=question)},
        ]
    elif family == "generic":
        messages = [{"role": "user", "content": JUDGE_INSTRUCTION.format(question=question)}]
    else:
        raise ValueError(f"unknown judge prompt family {family!r}")
    try:
        text = engine.apply_chat_template(messages)
    except (NotImplementedError, ValueError):
        if family != "generic":
            raise
        # A base model without a chat template: plain text that ends where the reasoning begins.
        text = messages[-1]["content"] + "\n\nReasoning:\n"
    return JudgePrompt(family, text, FORCE_SUFFIX[family])
