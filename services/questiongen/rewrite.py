"""QPO rewriting (METHOD §2): an optimizer model rewrites a generated question toward one goal.

For each question one goal is picked (seeded, so a run is reproducible): *solvability* (make it a
meaningful, self-contained problem with exactly one numeric answer and common-sense quantities)
or *difficulty* (make it harder with a few more steps or constraints, adding only a little text).
The optimizer reasons first and then writes the result after :data:`MARKER`; only what follows the
last marker counts. A pair (chosen = rewrite, rejected = original) exists only when the marker is
there, the rewrite is non-empty, complete (not cut by the token limit) and differs from the
original; otherwise the drop reason says which of these failed.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from scalequest.common.v1 import items_pb2 as pb

from libs.engines.base import Engine, SamplingSpec

MARKER = "### Improved problem:"

SOLVABILITY_PROMPT = """\
Below is a math word problem written by a student. Turn it into a good exercise.

A good exercise:
- is a real math problem that can be solved from what it states, with exactly one numerical answer;
- is self-contained: every quantity it needs is given, and nothing contradicts anything else;
- respects common sense: counts of people or objects are whole numbers, amounts and prices are positive;
- needs at least two steps of reasoning (add a step if it is a one-step problem);
- does not contain its own solution or answer.
Fix what is wrong and keep what is right; keep the topic and the style.

Problem:
{question}

First list in a few short sentences what needs to change. Then write the line "{marker}" followed by \
the complete improved problem and nothing else."""

DIFFICULTY_PROMPT = """\
Below is a math word problem. Make it harder.

- First fix anything that makes it unsolvable or ambiguous.
- Then raise the difficulty with one or two of these: an extra reasoning step, an extra condition or \
constraint, a quantity that must be derived instead of given, a less direct question.
- Add only about 10 to 20 words; keep exactly one numerical answer; do not include a solution.

Problem:
{question}

First say in a few short sentences how you will make it harder. Then write the line "{marker}" \
followed by the complete harder problem and nothing else."""

PROMPTS = {pb.REWRITE_GOAL_SOLVABILITY: SOLVABILITY_PROMPT, pb.REWRITE_GOAL_DIFFICULTY: DIFFICULTY_PROMPT}
GOAL_NAMES = {pb.REWRITE_GOAL_SOLVABILITY: "solvability", pb.REWRITE_GOAL_DIFFICULTY: "difficulty"}

# The marker as a model may actually write it: any heading level or bold, any case, optional colon.
_MARKER_RE = re.compile(r"(?:^|\n)[ \t]*(?:#+[ \t]*)?\**[ \t]*improved problem[ \t]*\**[ \t]*:?[ \t]*\**", re.IGNORECASE)
# Where a rewrite that goes on past the problem is cut: a solution or answer section.
_TAIL_RE = re.compile(r"\n\s*(?:#+\s*)?\**\s*(?:solution|answer|explanation|note)\b\s*\**\s*:?", re.IGNORECASE)
_WS = re.compile(r"\s+")


@dataclass
class RewriteResult:
    original: str
    goal: int
    rewritten: str  # "" when dropped
    drop_reason: str  # "" when kept
    output: str
    num_tokens: int = 0


def goal_name(goal: int) -> str:
    return GOAL_NAMES.get(goal, "unspecified")


def pick_goal(seed: int) -> int:
    """One of the two goals, uniformly, as a pure function of the seed (reproducible runs)."""
    bit = hashlib.sha256(f"qpo-goal:{seed}".encode()).digest()[0] & 1
    return pb.REWRITE_GOAL_SOLVABILITY if bit == 0 else pb.REWRITE_GOAL_DIFFICULTY


def _normalized(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).lower()
    return _WS.sub(" ", t).strip().rstrip(" .?!")


def parse_rewrite(output: str, original: str) -> tuple[str, str]:
    """``(rewritten, drop_reason)`` from the optimizer's output: the text after the LAST marker,
    without wrapping quotes/bold and without any solution section that follows it."""
    matches = list(_MARKER_RE.finditer(output))
    if not matches:
        return "", "rewrite_no_marker"
    text = output[matches[-1].end() :]
    tail = _TAIL_RE.search(text)
    if tail:
        text = text[: tail.start()]
    text = text.strip().strip("*").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    if not text:
        return "", "rewrite_empty"
    if _normalized(text) == _normalized(original):
        return "", "rewrite_unchanged"
    return text, ""


class Rewriter:
    """Asks the optimizer engine for one rewrite per question (greedy by default, as the paper)."""

    def __init__(self, engine: Engine, *, temperature: float = 0.0, top_p: float = 1.0, max_tokens: int = 1024):
        self.engine = engine
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def prompt(self, question: str, goal: int) -> str:
        template = PROMPTS.get(goal)
        if template is None:
            raise ValueError(f"unknown rewrite goal {goal}")
        return self.engine.apply_chat_template(
            [{"role": "user", "content": template.format(question=question.strip(), marker=MARKER)}]
        )

    async def rewrite(self, question: str, goal: int, seed: int = 0, sampling: pb.Sampling | None = None) -> RewriteResult:
        """``sampling`` (a run's optimizer_sampling, already resolved) overrides the service defaults."""
        if sampling is not None and sampling.max_tokens:
            spec = SamplingSpec(temperature=sampling.temperature, top_p=sampling.top_p or 1.0,
                                max_tokens=sampling.max_tokens, seed=seed)
        else:
            spec = SamplingSpec(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=seed)
        out = await self.engine.generate(self.prompt(question, goal), spec)
        c = out.completions[0]
        if c.finish_reason == "length":
            # The marker may be there, but the rewrite after it is probably cut short.
            return RewriteResult(question, goal, "", "rewrite_truncated", c.text, c.num_tokens)
        text, reason = parse_rewrite(c.text, question)
        return RewriteResult(question, goal, text, reason, c.text, c.num_tokens)
