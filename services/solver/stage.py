"""solver stage: n candidate solutions per question, final answer extracted from each.

Consumes accepted ``Question`` (``scalequest.work.solve``), produces ``SolvedQuestion`` (all n
candidates; those without an answer have ``answer == ""``) on ``scalequest.work.score``; a question none of whose candidates has a final answer ends as
a ``Rejection`` (reason ``no_answer``) on ``scalequest.work.sink``.
"""

from __future__ import annotations


from scalequest.common.v1 import items_pb2 as pb

from libs.aio import gather_eager
from libs.answers import extract_answer
from libs.engines.base import Engine, SamplingSpec
from libs.items import RUN_CLOSED, SCHEMA, forward, rejection
from libs.queue import subjects
from libs.queue.worker import Publish
from libs.runstate import RunStates, StageCounters

STAGE = "solver"

SOLVE_INSTRUCTION = "{question}\n\nSolve the problem step by step, and put your final answer within \\boxed{{}}."

# One worked example as a prior chat turn: small models (SmolLM2-135M) rarely write \boxed{}
# zero-shot (measured: 2 of 24 GSM8K samples) but usually do after one example (17 of 24).
EXAMPLE_QUESTION = (
    "Sam has 3 boxes with 4 pencils in each box. He gives away 5 pencils. How many pencils does he have left?"
)
EXAMPLE_SOLUTION = (
    "Sam starts with 3 x 4 = 12 pencils.\nAfter giving away 5 he has 12 - 5 = 7 pencils.\n"
    "The final answer is \\boxed{7}."
)
PROMPT_STYLES = ("zero_shot", "one_shot")


def solve_messages(question: str, style: str = "zero_shot") -> list[dict[str, str]]:
    """Chat messages asking for a step-by-step solution ending in \\boxed{}."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown solver prompt style {style!r}")
    turn = {"role": "user", "content": SOLVE_INSTRUCTION.format(question=question)}
    if style == "one_shot":
        return [
            {"role": "user", "content": SOLVE_INSTRUCTION.format(question=EXAMPLE_QUESTION)},
            {"role": "assistant", "content": EXAMPLE_SOLUTION},
            turn,
        ]
    return [turn]


class SolverStage:
    def __init__(
        self,
        engine: Engine,
        *,
        answer_fallback: bool = False,
        prompt_style: str = "zero_shot",
        counters: StageCounters | None = None,
        runs: RunStates | None = None,
    ) -> None:
        self.engine = engine
        self.answer_fallback = answer_fallback
        self.prompt_style = prompt_style
        self.counters = counters
        self.runs = runs

    def prompt(self, question: str) -> str:
        return self.engine.apply_chat_template(solve_messages(question, self.prompt_style))

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

        return await gather_eager(one(i) for i in range(n))

    async def handle(self, items: list[pb.Question]) -> list[list[Publish] | BaseException]:
        return await gather_eager((self._one(q) for q in items), return_exceptions=True)

    async def _one(self, q: pb.Question) -> list[Publish]:
        if self.runs and await self.runs.is_closed(q.run_id):
            # No work for an ended run, but the item still ends at the coordinator (accounting).
            return [rejection(q.run_id, q.item_id, STAGE, RUN_CLOSED)]
        cands = await self.solve(q.text, max(1, q.config.n_candidates), q.config.solution_sampling, q.seed * 64)
        answered = sum(1 for c in cands if c.answer)
        reason = None if answered else "no_answer"
        if self.counters:
            self.counters.add(q.run_id, processed=1, tokens=sum(c.num_tokens for c in cands), reason=reason)
        if not answered:
            return [rejection(q.run_id, q.item_id, STAGE, "no_answer", f"0 of {len(cands)} candidates had a final answer", q.text)]
        # Candidates without an answer travel on (never selectable) so agreement and difficulty
        # are shares of all n samples, and the record keeps every sample as provenance.
        solved = pb.SolvedQuestion(
            schema_version=SCHEMA,
            question=q,
            solver_model=self.engine.model_name,
            candidates=cands,
            dropped_candidates=len(cands) - answered,
        )
        return [forward(subjects.SCORE, solved, q.item_id)]
