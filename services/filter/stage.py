"""filter stage: language, exact-duplicate and solvability checks.

Consumes ``Question`` (``scalequest.work.filter``); accepted questions go on to
``scalequest.work.solve`` with their verdicts attached; rejected ones end as a
``Rejection`` outcome on ``scalequest.work.sink`` with the first failing check's reason.
"""

from __future__ import annotations

import asyncio
import math

from libs.engines.base import Engine, SamplingSpec
from libs.items import forward, rejection
from libs.queue import subjects
from libs.queue.worker import Publish
from libs.runstate import RunStates, StageCounters
from scalequest.common.v1 import items_pb2 as pb
from services.filter.checks import check_language, dedup_key, parse_verdict
from services.filter.settings import FilterSettings

STAGE = "filter"

JUDGE_INSTRUCTION = (
    "You check math problems. Decide whether the problem below is a real math problem that can be "
    "solved from the information it gives (no missing conditions, no contradictions). Think step by "
    "step in a few sentences, then finish with a last line that is exactly 'Verdict: Yes' or "
    "'Verdict: No'.\n\nProblem:\n{question}"
)
FORCE_SUFFIX = "\nVerdict:"


def verdict(check: str, passed: bool, reason: str = "", detail: str = "") -> pb.FilterVerdict:
    return pb.FilterVerdict(check=check, passed=passed, reason=reason, detail=detail[:500])


class FilterStage:
    def __init__(
        self,
        engine: Engine | None,
        settings: FilterSettings,
        dedup=None,
        *,
        counters: StageCounters | None = None,
        runs: RunStates | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.dedup = dedup
        self.counters = counters
        self.runs = runs

    async def judge_solvable(self, question: str) -> tuple[pb.FilterVerdict, int]:
        """Greedy judge; the final verdict is parsed (unparseable = its own reason). Returns tokens used."""
        if self.engine is None:
            raise RuntimeError("the solvability judge needs an engine")
        prompt = self.engine.apply_chat_template([{"role": "user", "content": JUDGE_INSTRUCTION.format(question=question)}])
        out = await self.engine.generate(
            prompt, SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=self.settings.judge_max_tokens, seed=0)
        )
        c = out.completions[0]
        tokens = c.num_tokens
        tail = c.text.strip().splitlines()[-1][:200] if c.text.strip() else ""
        v = parse_verdict(c.text)
        if v is None and self.settings.judge_verdict == "force":
            forced = await self.engine.generate(
                prompt + c.text.rstrip() + FORCE_SUFFIX,
                SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=1, seed=0, logprobs=20),
            )
            fc = forced.completions[0]
            tokens += fc.num_tokens
            p_yes, p_no = yes_no_probs(fc.top_logprobs[0] if fc.top_logprobs else {})
            if p_yes + p_no > 0:
                ok = p_yes >= p_no
                return verdict("solvability", ok, "" if ok else "judge_unsolvable", f"forced P(yes)={p_yes/(p_yes+p_no):.2f}"), tokens
        if v is None:
            return verdict("solvability", False, "judge_unparseable", tail), tokens
        return verdict("solvability", v, "" if v else "judge_unsolvable", tail), tokens

    async def check(self, question: str, scope: str, item_id: str, judge: bool) -> tuple[list[pb.FilterVerdict], int]:
        """Run the checks in order, stopping at the first failure. Returns (verdicts, judge tokens)."""
        text = question.strip()
        vs: list[pb.FilterVerdict] = []
        if len(text) < self.settings.min_question_chars:
            return [verdict("length", False, "too_short", f"{len(text)} chars")], 0
        if len(text) > self.settings.max_question_chars:
            return [verdict("length", False, "too_long", f"{len(text)} chars")], 0
        vs.append(verdict("length", True))
        ok, reason, detail = check_language(text)
        vs.append(verdict("language", ok, reason, detail))
        if not ok:
            return vs, 0
        if self.settings.dedup_enabled and self.dedup is not None and scope:
            first = await self.dedup.claim(scope, dedup_key(text), item_id)
            vs.append(verdict("dedup", first, "" if first else "duplicate"))
            if not first:
                return vs, 0
        tokens = 0
        if judge:
            v, tokens = await self.judge_solvable(text)
            vs.append(v)
        return vs, tokens

    async def handle(self, items: list[pb.Question]) -> list[list[Publish] | BaseException]:
        return list(await asyncio.gather(*(self._one(q) for q in items), return_exceptions=True))

    async def _one(self, q: pb.Question) -> list[Publish]:
        if self.runs and await self.runs.is_closed(q.run_id):
            return []
        vs, tokens = await self.check(q.text, q.run_id, q.item_id, q.config.judge_enabled)
        failed = next((v for v in vs if not v.passed), None)
        if self.counters:
            self.counters.add(q.run_id, processed=1, tokens=tokens, reason=failed.reason if failed else None)
        if failed:
            return [rejection(q.run_id, q.item_id, STAGE, failed.reason, failed.detail, q.text)]
        out = pb.Question()
        out.CopyFrom(q)
        out.verdicts.extend(vs)
        return [forward(subjects.SOLVE, out, q.item_id)]


def yes_no_probs(top: dict[str, float]) -> tuple[float, float]:
    """Total probability of Yes-like and No-like first tokens among the top log-probs."""
    p_yes = p_no = 0.0
    for tok, lp in top.items():
        w = tok.strip().lower()
        if w in ("yes", "y"):
            p_yes += math.exp(lp)
        elif w in ("no", "n"):
            p_no += math.exp(lp)
    return p_yes, p_no
