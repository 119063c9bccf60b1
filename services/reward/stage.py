"""reward stage: scores candidates and selects one per question.

Scores: answer agreement (share of candidates with a math-verify-equivalent answer), a
generative judge (probability the model assigns to "Yes" when asked whether the solution
is correct) and, when ``SQ_REWARD_MODEL`` is set, a reward model over (question, solution)
rendered with its chat template (vLLM pooling runner or transformers; libs/engines/pooling.py),
its raw score mapped to [0, 1] (``rm_score``); reward = weighted mean of the parts in use.
Candidates without a final answer are never judged or reward-scored. Consumes
``SolvedQuestion`` (``scalequest.work.score``) and produces one ``Outcome`` on
``scalequest.work.sink``: a ``FinalRecord`` or a ``Rejection`` (``no_answer``,
``insufficient_agreement``).
"""

from __future__ import annotations

import asyncio
import math

from scalequest.common.v1 import items_pb2 as pb

from libs.aio import gather_eager
from libs.answers import group_equivalent
from libs.engines.base import Engine, SamplingSpec
from libs.engines.pooling import ScoringEngine
from libs.items import RUN_CLOSED, SCHEMA, rejection
from libs.queue import subjects
from libs.queue.worker import Publish
from libs.runstate import RunStates, StageCounters
from services.filter.stage import yes_no_probs
from services.reward.difficulty import KeepBin, keep_for_mix, parse_keep
from services.reward.selection import Selection, agreement_shares, select
from services.reward.settings import RewardSettings

STAGE = "reward"

# The judge reads the first answer token's top log-probs, greedily: one sampling spec for every call.
JUDGE_SAMPLING = SamplingSpec(temperature=0.0, max_tokens=1, seed=0, logprobs=20)

JUDGE_PROMPT = (
    "Here is a math problem and a proposed solution.\n\nProblem:\n{question}\n\nSolution:\n{solution}\n\n"
    "Is the solution correct, with the right final answer? Answer Yes or No."
)


class RewardStage:
    def __init__(
        self,
        engine: Engine | None,
        settings: RewardSettings,
        *,
        reward_model: ScoringEngine | None = None,
        counters: StageCounters | None = None,
        runs: RunStates | None = None,
    ) -> None:
        self.engine = engine
        self.reward_model = reward_model
        self.settings = settings
        self.counters = counters
        self.runs = runs
        self._bins: dict[str, tuple[KeepBin, ...]] = {}

    def keep_bins(self, run_spec: str) -> tuple[KeepBin, ...]:
        """The run's target difficulty mix, else the service default (validated at start-up)."""
        spec = run_spec or self.settings.difficulty_keep
        if spec not in self._bins:
            self._bins[spec] = parse_keep(spec)
        return self._bins[spec]

    @property
    def judging(self) -> bool:
        return self.engine is not None and self.settings.judge_enabled

    @property
    def scorer(self) -> str:
        """The parts of the reward, e.g. "rm+agreement+judge"."""
        parts = (["rm"] if self.reward_model is not None else []) + ["agreement"] + (["judge"] if self.judging else [])
        return "+".join(parts)

    async def rm_scores(self, question: str, cands: list[pb.Candidate]) -> list[float | None]:
        """Reward-model score in [0, 1] per candidate; None for candidates without a final answer
        or too long for the reward model's context."""
        assert self.reward_model is not None
        todo = [i for i, c in enumerate(cands) if c.answer]
        out: list[float | None] = [None] * len(cands)
        if not todo:
            return out
        chats = [[{"role": "user", "content": question}, {"role": "assistant", "content": cands[i].text}] for i in todo]
        raw = await self.reward_model.score(chats, skip_overlong=True)
        for i, value in zip(todo, normalize_rm(raw, self.settings.reward_model_normalize)):
            out[i] = value
        return out

    async def judge_score(self, question: str, solution: str) -> float:
        """P(Yes) / (P(Yes) + P(No)) of the first answer token; 0.5 when neither is in the top-k."""
        assert self.engine is not None
        prompt = self.engine.apply_chat_template(
            [{"role": "user", "content": JUDGE_PROMPT.format(question=question, solution=solution)}]
        )
        out = await self.engine.generate(prompt, JUDGE_SAMPLING)
        c = out.completions[0]
        p_yes, p_no = yes_no_probs(c.top_logprobs[0] if c.top_logprobs else {})
        return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else 0.5

    async def score(
        self, question: str, cands: list[pb.Candidate], rule: str, min_agreement: int, labels: list[int] | None = None
    ) -> tuple[list[pb.Candidate], Selection]:
        """Fill rm_score, judge_score, agreement and reward of ``cands`` (in place: callers pass
        their own messages), then select. ``labels``: the answers' equivalence classes when the
        caller grouped them already."""
        if labels is None:
            labels = await asyncio.to_thread(group_equivalent, [c.answer for c in cands])
        shares = agreement_shares(labels)
        # Candidates without an answer can never be selected: don't spend a judge call on them.
        if self.judging:
            judge_task = gather_eager(self.judge_score(question, c.text) if c.answer else _zero() for c in cands)
        else:
            judge_task = _zeros(len(cands))
        rm_task = self.rm_scores(question, cands) if self.reward_model is not None else _nones(len(cands))
        judged, rms = await gather_eager((judge_task, rm_task))
        w_j = self.settings.judge_weight if self.judging else 0.0
        w_r = self.settings.reward_model_weight if self.reward_model is not None else 0.0
        w_a = self.settings.agreement_weight
        total = (w_j + w_a + w_r) or 1.0
        for c, share, j, rm in zip(cands, shares, judged, rms):
            c.agreement = share
            c.judge_score = j
            if rm is not None:
                c.rm_score = rm
            c.reward = (w_j * j + w_a * share + w_r * (rm or 0.0)) / total
        sel = select(labels, [c.reward for c in cands], rule or self.settings.selection_rule, min_agreement or self.settings.min_agreement)
        return cands, sel

    async def handle(self, items: list[pb.SolvedQuestion]) -> list[list[Publish] | BaseException]:
        # Answer equivalence (sympy) off the event loop, in one thread hop for the whole batch.
        labels = await asyncio.to_thread(_group_all, items)
        return await gather_eager((self._one(s, lab) for s, lab in zip(items, labels)), return_exceptions=True)

    async def _one(self, s: pb.SolvedQuestion, labels: list[int] | BaseException | None = None) -> list[Publish]:
        q = s.question
        if isinstance(labels, BaseException):
            raise labels
        if self.runs and await self.runs.is_closed(q.run_id):
            # No work for an ended run, but the item still ends at the coordinator (accounting).
            return [rejection(q.run_id, q.item_id, STAGE, RUN_CLOSED)]
        scored, sel = await self.score(q.text, list(s.candidates), q.config.selection_rule, q.config.min_agreement,
                                       labels)  # fmt: skip
        difficulty = 1.0 - sel.agreement  # fail rate: candidates not agreeing with the selected answer
        if sel.index >= 0 and not keep_for_mix(q.item_id, difficulty, self.keep_bins(q.config.difficulty_keep)):
            sel.index, sel.rejected_reason = -1, "difficulty_mix"
            sel.reason = f"difficulty {difficulty:.2f} dropped by the target mix"
        if self.counters:
            judged_n = sum(1 for c in scored if c.answer) if self.judging else 0
            self.counters.add(q.run_id, processed=1, tokens=judged_n,
                              reason=sel.rejected_reason or None)
        if sel.index < 0:
            return [rejection(q.run_id, q.item_id, STAGE, sel.rejected_reason, sel.reason, q.text)]
        # ``s`` is this stage's own decoded message, its candidates now scored in place; it is
        # copied once, into the outcome (a message built and then assigned is copied again).
        out = pb.Outcome()
        record = out.record
        record.schema_version = SCHEMA
        record.solved.CopyFrom(s)
        record.selected = sel.index
        record.selection_reason = sel.reason
        record.difficulty = difficulty
        record.scorer = self.scorer
        record.answered = sel.answered
        record.distinct_answers = sel.distinct_answers
        return [Publish(subjects.SINK.subject, out.SerializeToString(), f"{q.item_id}.outcome")]


def _group_all(items: list[pb.SolvedQuestion]) -> list[list[int] | BaseException]:
    """``group_equivalent`` of each item's candidate answers (an item's error stays its own)."""
    out: list[list[int] | BaseException] = []
    for s in items:
        try:
            out.append(group_equivalent([c.answer for c in s.candidates]))
        except Exception as e:  # noqa: BLE001 -- fails that item only, like a per-item call did
            out.append(e)
    return out


async def _zero() -> float:
    return 0.0


async def _zeros(n: int) -> list[float]:
    return [0.0] * n


async def _nones(n: int) -> list[float | None]:
    return [None] * n


def normalize_rm(raw: list[float], mode: str) -> list[float | None]:
    """Raw reward-model scores -> [0, 1]; NaN (not scored) -> None.

    sigmoid: ``1 / (1 + exp(-raw))`` per candidate, so a score means the same across questions
    (reward models trained as Bradley-Terry rankers output logits). minmax: rescaled over this
    question's scored candidates, best = 1 and worst = 0 (0.5 when all tie): rank only.
    """
    ok = [x for x in raw if not math.isnan(x)]
    if mode == "minmax":
        lo, hi = (min(ok), max(ok)) if ok else (0.0, 0.0)
        return [None if math.isnan(x) else ((x - lo) / (hi - lo) if hi > lo else 0.5) for x in raw]
    if mode != "sigmoid":
        raise ValueError(f"unknown reward-model normalization {mode!r}")
    return [None if math.isnan(x) else _sigmoid(x) for x in raw]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
