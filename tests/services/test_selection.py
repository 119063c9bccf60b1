import pytest

from services.reward.selection import agreement_shares, select


def test_top_reward_ignores_agreement():
    s = select([0, 0, 1], [0.2, 0.3, 0.9], "top_reward")
    assert s.index == 2 and s.agreement == pytest.approx(1 / 3)


def test_majority_then_reward():
    s = select([0, 0, 1], [0.2, 0.3, 0.9], "majority_then_reward")
    assert s.index == 1 and s.agreement == pytest.approx(2 / 3)


def test_majority_tie_broken_by_total_reward():
    s = select([0, 0, 1, 1], [0.1, 0.1, 0.5, 0.4], "majority_then_reward")
    assert s.index == 2


def test_require_agreement():
    assert select([0, 0, 1], [0.1, 0.2, 0.3], "require_agreement", min_agreement=2).index == 1
    s = select([0, 1, 2], [0.1, 0.2, 0.3], "require_agreement", min_agreement=2)
    assert s.index == -1 and s.rejected_reason == "insufficient_agreement"


def test_no_answers_and_unknown_rule():
    assert select([-1, -1], [0.5, 0.5], "top_reward").rejected_reason == "no_answer"
    with pytest.raises(ValueError, match="unknown selection rule"):
        select([0], [1.0], "best")


def test_agreement_shares():
    assert agreement_shares([0, 0, 1, -1]) == [0.5, 0.5, 0.25, 0.0]
