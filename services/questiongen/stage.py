"""questiongen stage: samples questions from the question-generator model.

Consumes ``GenerateTask`` (``scalequest.work.generate``), produces ``Question`` on
``scalequest.work.filter``; truncated or empty samples end as a ``Rejection`` outcome on
``scalequest.work.sink`` (reasons ``gen_truncated``, ``gen_empty``).

In a QPO run (``RunConfig.run_type = RUN_TYPE_QPO``) the sampled question is rewritten by the
optimizer model (:mod:`services.questiongen.rewrite`) and the task ends here: a
``PreferencePair`` outcome on ``scalequest.work.sink``, or a rejection with the rewrite's drop
reason (``rewrite_no_marker``, ``rewrite_empty``, ``rewrite_unchanged``, ``rewrite_truncated``).
"""

from __future__ import annotations

from dataclasses import dataclass

from scalequest.common.v1 import items_pb2 as pb

from libs.aio import gather_eager
from libs.engines.base import Engine, SamplingSpec
from libs.items import RUN_CLOSED, SCHEMA, forward, rejection
from libs.queue import subjects
from libs.queue.worker import Publish
from libs.runstate import RunStates, StageCounters
from services.questiongen.rewrite import Rewriter, pick_goal

STAGE = "questiongen"

INSTRUCTED_PROMPT = (
    "Write one new math word problem for a student. It must be self-contained, have exactly one "
    "numerical answer, and need a few steps of reasoning. Write only the problem, no solution."
)


@dataclass
class Sample:
    text: str
    drop_reason: str  # "" = kept
    num_tokens: int
    seed: int


def mode_name(mode: int) -> str:
    return "instructed" if mode == pb.GENERATION_MODE_INSTRUCTED else "scratch"


def clean_question(text: str) -> str:
    """Trim whitespace and any role header a from-scratch sample may start with."""
    t = text.strip()
    for head in ("user\n", "User:", "Question:", "Problem:"):
        if t.startswith(head):
            t = t[len(head) :].strip()
    return t


class QuestionGenStage:
    def __init__(
        self,
        engine: Engine,
        *,
        counters: StageCounters | None = None,
        runs: RunStates | None = None,
        rewriter: Rewriter | None = None,
    ):
        self.engine = engine
        self.counters = counters
        self.runs = runs
        self.rewriter = rewriter

    def prompt(self, mode: int) -> str:
        """Scratch: only the template prefix up to the user's text. Instructed: ask for a problem."""
        if mode == pb.GENERATION_MODE_INSTRUCTED:
            return self.engine.apply_chat_template([{"role": "user", "content": INSTRUCTED_PROMPT}])
        return self.engine.chat_prefix()

    async def sample(self, mode: int, sampling: pb.Sampling, seed: int) -> Sample:
        params = SamplingSpec(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=seed,
            stop=tuple(self.engine.stop_strings()),
        )
        result = await self.engine.generate(self.prompt(mode), params)
        c = result.completions[0]
        text = clean_question(c.text)
        if c.finish_reason == "length":
            return Sample(text, "gen_truncated", c.num_tokens, seed)
        if not text:
            return Sample("", "gen_empty", c.num_tokens, seed)
        return Sample(text, "", c.num_tokens, seed)

    async def handle(self, tasks: list[pb.GenerateTask]) -> list[list[Publish] | BaseException]:
        """Queue adapter entry: one output list per task, all tasks sampled concurrently."""
        return await gather_eager((self._one(t) for t in tasks), return_exceptions=True)

    async def _one(self, task: pb.GenerateTask) -> list[Publish]:
        if self.runs and await self.runs.is_closed(task.run_id):
            # No work for an ended run, but the item still ends at the coordinator (accounting).
            return [rejection(task.run_id, task.item_id, STAGE, RUN_CLOSED)]
        s = await self.sample(task.config.mode, task.config.question_sampling, task.seed)
        if s.drop_reason:
            if self.counters:
                self.counters.add(task.run_id, processed=1, tokens=s.num_tokens, reason=s.drop_reason)
            return [rejection(task.run_id, task.item_id, STAGE, s.drop_reason, question=s.text)]
        if task.config.run_type == pb.RUN_TYPE_QPO:
            return await self._rewrite(task, s)
        if self.counters:
            self.counters.add(task.run_id, processed=1, tokens=s.num_tokens)
        q = pb.Question(
            schema_version=SCHEMA,
            run_id=task.run_id,
            item_id=task.item_id,
            seed=task.seed,
            config=task.config,
            text=s.text,
            generator_model=self.engine.model_name,
            num_tokens=s.num_tokens,
        )
        return [forward(subjects.FILTER, q, task.item_id)]

    async def _rewrite(self, task: pb.GenerateTask, s: Sample) -> list[Publish]:
        """QPO: rewrite the sampled question toward one seeded goal and end the task with a pair."""
        if self.rewriter is None:
            raise RuntimeError("QPO run but this questiongen has no optimizer engine")
        goal = pick_goal(task.seed)
        r = await self.rewriter.rewrite(s.text, goal, seed=task.seed, sampling=task.config.optimizer_sampling)
        if self.counters:
            self.counters.add(task.run_id, processed=1, tokens=s.num_tokens + r.num_tokens, reason=r.drop_reason or None)
        if r.drop_reason:
            return [rejection(task.run_id, task.item_id, STAGE, r.drop_reason, r.output[-500:], s.text)]
        pair = pb.PreferencePair(
            schema_version=SCHEMA,
            run_id=task.run_id,
            item_id=task.item_id,
            seed=task.seed,
            config=task.config,
            prompt=self.prompt(pb.GENERATION_MODE_SCRATCH),
            chosen=r.rewritten,
            rejected=s.text,
            goal=goal,
            generator_model=self.engine.model_name,
            optimizer_model=self.rewriter.model_name,
            optimizer_output=r.output,
        )
        return [Publish(subjects.SINK.subject, pb.Outcome(pair=pair).SerializeToString(), f"{task.item_id}.outcome")]
