"""Best-of-n selection over scored candidates.

Rules (METHOD §5):
- ``top_reward``: the highest-reward candidate (the paper's rule);
- ``majority_then_reward``: the largest class of equivalent answers (ties: higher total
  reward), then the highest reward inside it;
- ``require_agreement``: like majority, but the class must hold at least ``min_agreement``
  candidates, otherwise nothing is selected.
"""

from __future__ import annotations

from dataclasses import dataclass

RULES = ("top_reward", "majority_then_reward", "require_agreement")


@dataclass
class Selection:
    index: int  # -1 = nothing selected
    reason: str
    agreement: float  # share of candidates agreeing with the selected answer
    rejected_reason: str = ""  # machine-readable reason when index == -1
    answered: int = 0  # candidates with a final answer
    distinct_answers: int = 0  # equivalence classes among them


def agreement_shares(labels: list[int]) -> list[float]:
    """For each candidate, the share of all candidates in its equivalence class."""
    n = len(labels)
    return [(labels.count(lab) / n if lab >= 0 else 0.0) for lab in labels] if n else []


def select(labels: list[int], rewards: list[float], rule: str, min_agreement: int = 2) -> Selection:
    """Pick one candidate. `labels` are answer-equivalence classes (-1 = no answer)."""
    sel = _select(labels, rewards, rule, min_agreement)
    sel.answered = sum(1 for lab in labels if lab >= 0)
    sel.distinct_answers = len({lab for lab in labels if lab >= 0})
    return sel


def _select(labels: list[int], rewards: list[float], rule: str, min_agreement: int) -> Selection:
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {', '.join(RULES)}")
    n = len(labels)
    valid = [i for i in range(n) if labels[i] >= 0]
    if not valid:
        return Selection(-1, "no candidate has a final answer", 0.0, "no_answer")
    shares = agreement_shares(labels)
    if rule == "top_reward":
        best = max(valid, key=lambda i: (rewards[i], -i))
        return Selection(best, f"top_reward: reward={rewards[best]:.3f}, agreement={shares[best]:.2f}", shares[best])
    classes: dict[int, list[int]] = {}
    for i in valid:
        classes.setdefault(labels[i], []).append(i)
    lab, members = max(classes.items(), key=lambda kv: (len(kv[1]), sum(rewards[i] for i in kv[1]), -kv[0]))
    best = max(members, key=lambda i: (rewards[i], -i))
    size = len(members)
    if rule == "require_agreement" and size < min_agreement:
        return Selection(
            -1,
            f"require_agreement: largest agreeing class has {size} < {min_agreement} of {n}",
            size / n,
            "insufficient_agreement",
        )
    return Selection(best, f"{rule}: {size}/{n} agree, reward={rewards[best]:.3f}", size / n)
