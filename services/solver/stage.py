"""solver stage: n candidate solutions per question, final answer extracted from each.

Consumes accepted ``Question`` (``scalequest.work.solve``), produces ``SolvedQuestion`` on
``scalequest.work.score``; a question none of whose candidates has a final answer ends as
a ``Rejection`` (reason ``no_answer``) on ``scalequest.work.sink``.
"""

from __future__ import annotations

import asyncio

from libs.answers import extract_answer
from libs.engines.base import Engine, SamplingSpec
from libs.items import SCHEMA, forward, rejection
from libs.queue import subjects
from libs.queue.worker import Publish
from libs.runstate import RunStates, StageCounters
from scalequest.common.v1 import items_pb2 as pb

STAGE = "solver"

SOLVE_INSTRUCTION = "{question}\n\nSolve the problem step by step, and put your final answer within \\boxed{{}}."


class SolverStage:
    def __init__(
        self,
        engine: Engine,
        *,
        answer_fallback: bool = False,
        counters: StageCounters | None = None,
        runs: RunStates | None = None,
    ) -> None:
        self.engine = engine
        self.answer_fallback = answer_fallback
        self.counters = counters
        self.runs = runs

    def prompt(self, question: str) -> str:
        return self.engine.apply_chat_template([{"role": "user", "content": SOLVE_INSTRUCTION.format(question=question)}])

    async def solve(self, question: str, n: int, sampling: pb.Sampling, seed: int) -> list[pb.Candidate]:
        """n candidates; candidate i is sampled with seed + i so each one is reproducible."""
        prompt = self.prompt(question)
        stops = tuple(self.engine.stop_strings())

        async def one(i: int) -> pb.Candidate:
            params = SamplingSpec(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=seed + i,
                stop=stops,
            )
            c = (await self.engine.generate(prompt, params)).completions[0]
            answer, _ = extract_answer(c.text, fallback=self.answer_fallback)
            return pb.Candidate(
                text=c.text.strip(), answer=answer, num_tokens=c.num_tokens, finish_reason=c.finish_reason, seed=seed + i
            )

        return list(await asyncio.gather(*(one(i) for i in range(n))))

    async def handle(self, items: list[pb.Question]) -> list[list[Publish] | BaseException]:
        return list(await asyncio.gather(*(self._one(q) for q in items), return_exceptions=True))

    async def _one(self, q: pb.Question) -> list[Publish]:
        if self.runs and await self.runs.is_closed(q.run_id):
            return []
        cands = await self.solve(q.text, max(1, q.config.n_candidates), q.config.solution_sampling, q.seed * 64)
        kept = [c for c in cands if c.answer]
        reason = None if kept else "no_answer"
        if self.counters:
            self.counters.add(q.run_id, processed=1, tokens=sum(c.num_tokens for c in cands), reason=reason)
        if not kept:
            return [rejection(q.run_id, q.item_id, STAGE, "no_answer", f"0 of {len(cands)} candidates had a final answer", q.text)]
        solved = pb.SolvedQuestion(
            schema_version=SCHEMA,
            question=q,
            solver_model=self.engine.model_name,
            candidates=kept,
            dropped_candidates=len(cands) - len(kept),
        )
        return [forward(subjects.SCORE, solved, q.item_id)]
