"""Quality check of the solver + reward path on a benchmark with gold answers.

Solves each question with the solver stage (n candidates, the run's sampling), scores the
candidates once with the reward stage (answer agreement + generative judge, plus a reward model
when --reward-model is given), then applies every selection rule to the same scored candidates
and compares the selected answer with the gold answer (math-verify). Prints a table, and writes
it as Markdown (--md) and JSON (--json).

    .venv/bin/python scripts/quality_check.py --data PATH/gsm8k/test.jsonl --limit 200 \
        --md docs/quality.md --json docs/quality.json

Columns: *selected* = share of questions for which the rule picked a candidate; *accuracy* =
correct selected answers / all questions; *precision* = correct / selected. Reference rows:
*single sample* (candidate 0 alone, what one sample would give) and *oracle* (any candidate right).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="benchmark JSONL/Parquet with question + gold answer")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=4, help="candidates per question")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--prompt", choices=["zero_shot", "one_shot"], default="one_shot")
    p.add_argument("--no-judge", action="store_true")
    p.add_argument("--min-agreement", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--md", default="", help="write the table as Markdown here")
    p.add_argument("--json", default="", help="write all figures as JSON here")
    return p.parse_args(argv)


async def main(args) -> int:
    from scalequest.common.v1 import items_pb2 as pb

    from libs.answers import equivalent, group_equivalent
    from libs.benchmarks import load_problems
    from libs.engines.factory import engine_from_settings
    from libs.engines.registry import close_all
    from libs.settings import load_settings
    from services.reward.selection import RULES, select
    from services.reward.settings import RewardSettings
    from services.reward.stage import RewardStage
    from services.solver.settings import SolverSettings
    from services.solver.stage import SolverStage

    problems = load_problems(args.data, args.limit)
    settings = load_settings(SolverSettings, model=args.model)
    t0 = time.monotonic()
    engine = await engine_from_settings(settings)
    print(f"engine {engine.model_name} ready in {time.monotonic() - t0:.1f}s; {len(problems)} problems", flush=True)
    solver = SolverStage(engine, prompt_style=args.prompt)
    reward = RewardStage(engine if not args.no_judge else None, load_settings(RewardSettings, judge_enabled=not args.no_judge))
    sampling = pb.Sampling(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    done = 0
    tokens = 0
    t_start = time.monotonic()

    async def one(i, prob):
        nonlocal done, tokens
        cands = await solver.solve(prob.question, args.n, sampling, args.seed * 1000 + i * args.n)
        scored, _ = await reward.score(prob.question, cands, "top_reward", args.min_agreement)
        labels = await asyncio.to_thread(group_equivalent, [c.answer for c in scored])
        correct = [bool(c.answer) and await asyncio.to_thread(equivalent, c.answer, prob.gold) for c in scored]
        done += 1
        tokens += sum(c.num_tokens for c in scored)
        if done % 10 == 0 or done == len(problems):
            el = time.monotonic() - t_start
            print(f"  {done}/{len(problems)} solved+scored, {el:.0f}s, {tokens / el:.0f} generated tok/s", flush=True)
        return scored, labels, correct

    results = await asyncio.gather(*(one(i, p) for i, p in enumerate(problems)))
    wall = time.monotonic() - t_start
    await close_all()

    n_q = len(problems)
    n_c = sum(len(s) for s, _, _ in results)
    answered = sum(1 for s, _, _ in results for c in s if c.answer)
    rows = []
    for rule in RULES:
        selected = right = 0
        for scored, labels, correct in results:
            sel = select(labels, [c.reward for c in scored], rule, args.min_agreement)
            if sel.index >= 0:
                selected += 1
                right += correct[sel.index]
        rows.append({"rule": rule, "selected": selected / n_q, "accuracy": right / n_q,
                     "precision": right / selected if selected else 0.0})
    first_sel = sum(1 for s, _, _ in results if s and s[0].answer)
    first_right = sum(1 for _, _, c in results if c and c[0])
    rows.append({"rule": "single sample (candidate 0)", "selected": first_sel / n_q, "accuracy": first_right / n_q,
                 "precision": first_right / first_sel if first_sel else 0.0})
    oracle = sum(1 for _, _, c in results if any(c))
    rows.append({"rule": "oracle (any candidate right)", "selected": float("nan"), "accuracy": oracle / n_q,
                 "precision": float("nan")})

    summary = {
        "data": os.path.basename(os.path.dirname(os.path.abspath(args.data))) + "/" + os.path.basename(args.data),
        "questions": n_q, "candidates": n_c, "candidate_extraction_rate": answered / max(n_c, 1),
        "question_extraction_rate": sum(1 for s, _, _ in results if any(c.answer for c in s)) / n_q,
        "model": engine.model_name, "n": args.n, "temperature": args.temperature, "top_p": args.top_p,
        "max_tokens": args.max_tokens, "prompt": args.prompt, "scorer": reward.scorer,
        "min_agreement": args.min_agreement, "wall_seconds": wall, "generated_tokens": tokens, "rules": rows,
    }
    lines = [
        f"Data: {summary['data']} (first {n_q} questions); model {os.path.basename(str(engine.model_name))}; "
        f"n={args.n}, T={args.temperature}, top_p={args.top_p}, max_tokens={args.max_tokens}, "
        f"solver prompt {args.prompt}; scorer {reward.scorer}; require_agreement k={args.min_agreement}.",
        "",
        f"Answer extraction: {summary['candidate_extraction_rate']:.1%} of {n_c} candidates, "
        f"{summary['question_extraction_rate']:.1%} of questions have at least one answer. "
        f"Wall {wall:.0f} s, {tokens / wall:.0f} generated tok/s.",
        "",
        "| selection rule | selected (share of questions) | accuracy (correct / all) | precision (correct / selected) |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        fmt = lambda x: "–" if x != x else f"{x:.1%}"
        lines.append(f"| {r['rule']} | {fmt(r['selected'])} | {fmt(r['accuracy'])} | {fmt(r['precision'])} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(table + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(asyncio.run(main(parse_args())))
