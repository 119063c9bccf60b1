"""A scripted "math world" for the fake engine: answers each stage's prompt the way a
well-behaved model would, deterministically from the sampling seed. Used by orchestration
tests and benchmarks so the whole pipeline runs at zero model cost, with a known mix of
outcomes (seed % 10 == 0: non-English question; == 1: an exact duplicate; candidates with
seed % 4 == 3 answer wrongly; QPO rewrites: seed % 5 == 0 forgets the marker, == 1 returns
the problem unchanged, otherwise adds a step).
"""

from __future__ import annotations

import re

from libs.engines.base import SamplingSpec
from libs.engines.fake import FakeEngine

# A literal start lets the regex engine skip ahead: 0.5 us per solver prompt instead of 2.5.
_NUMS = re.compile(r"has (\d+) apples and buys (\d+)")
_REWRITE = re.compile(r"Problem:\n(.*?)\n\nFirst .*?\"(### Improved problem:)\"", re.DOTALL)


def math_responder(prompt: str, params: SamplingSpec, index: int) -> str:
    seed = params.seed or 0
    m = _REWRITE.search(prompt) if "### Improved problem:" in prompt else None  # the regex alone cost 3 us a call
    if m:  # QPO optimizer
        problem, marker = m.group(1).strip(), m.group(2)
        if seed % 5 == 0:
            return f"The problem is fine as it is.\n{problem} Then he eats 2."
        if seed % 5 == 1:
            return f"Nothing needs to change.\n{marker}\n{problem}"
        return f"It needs one more step.\n{marker}\n{problem.rstrip('?')} after he gives away 1 apple?"
    if "Verdict: Yes" in prompt and "Problem:" in prompt:  # solvability judge
        return "All quantities are given and one number is asked for.\nVerdict: Yes"
    if "Solution:" in prompt and "Answer Yes or No" in prompt:  # generative reward judge
        return "Yes"
    if "\\boxed{}" in prompt:  # solver
        m = _NUMS.search(prompt)
        a, b = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        ans = a + b + (1 if seed % 4 == 3 else 0)
        return f"He starts with {a} apples and buys {b}, so {a} + {b} = {ans}.\nThe answer is \\boxed{{{ans}}}."
    # question generation (scratch prefix or instructed prompt)
    if seed % 10 == 0:
        return "小明有三个苹果，又买了两个。他现在有几个苹果？"
    if seed % 10 == 1:
        return "Tom has 2 apples and buys 3 more. How many apples does he have now?"
    return f"Tom has {seed % 97 + 2} apples and buys {seed % 13 + 5} more. How many apples does he have now? (case {seed})"


def math_engine(**kw) -> FakeEngine:
    return FakeEngine(math_responder, model_name="fake-math", logprobs={"Yes": -0.2, "No": -1.7}, **kw)
