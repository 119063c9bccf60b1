"""Outcomes (protobuf) -> one Parquet row each, with full provenance: ``FinalRecord`` rows for
synthesis runs, ``PreferencePair`` rows (DPO-ready: prompt, chosen, rejected, goal) for QPO runs."""

from __future__ import annotations

import time

from scalequest.common.v1 import items_pb2 as pb


def _sampling(s: pb.Sampling) -> dict:
    return {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}


def record_row(rec: pb.FinalRecord) -> dict:
    solved = rec.solved
    q = solved.question
    sel = solved.candidates[rec.selected]
    cfg = q.config
    return {
        "item_id": q.item_id,
        "run_id": q.run_id,
        "question": q.text,
        "solution": sel.text,
        "answer": sel.answer,
        "difficulty": rec.difficulty,
        "answered": rec.answered,
        "distinct_answers": rec.distinct_answers,
        "predicted_difficulty": q.predicted_difficulty if q.HasField("predicted_difficulty") else None,
        "agreement": sel.agreement,
        "selection_reason": rec.selection_reason,
        "scorer": rec.scorer,
        "selected": rec.selected,
        "generator_model": q.generator_model,
        "solver_model": solved.solver_model,
        "judge_model": cfg.judge_model,
        "seed": q.seed,
        "question_sampling": _sampling(cfg.question_sampling),
        "solution_sampling": _sampling(cfg.solution_sampling),
        "filter_verdicts": [
            {"check": v.check, "passed": v.passed, "reason": v.reason, "detail": v.detail} for v in q.verdicts
        ],
        "candidates": [
            {
                "text": c.text,
                "answer": c.answer,
                "num_tokens": c.num_tokens,
                "finish_reason": c.finish_reason,
                "judge_score": c.judge_score,
                "agreement": c.agreement,
                "reward": c.reward,
                "rm_score": c.rm_score if c.HasField("rm_score") else None,
                "seed": c.seed,
            }
            for c in solved.candidates
        ],
        "created_at": time.time(),
    }


GOALS = {pb.REWRITE_GOAL_SOLVABILITY: "solvability", pb.REWRITE_GOAL_DIFFICULTY: "difficulty"}


def pair_row(pair: pb.PreferencePair) -> dict:
    cfg = pair.config
    return {
        "item_id": pair.item_id,
        "run_id": pair.run_id,
        "prompt": pair.prompt,
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        "goal": GOALS.get(pair.goal, "unspecified"),
        "generator_model": pair.generator_model,
        "optimizer_model": pair.optimizer_model,
        "seed": pair.seed,
        "question_sampling": _sampling(cfg.question_sampling),
        "optimizer_sampling": _sampling(cfg.optimizer_sampling),
        "optimizer_output": pair.optimizer_output,
        "created_at": time.time(),
    }
