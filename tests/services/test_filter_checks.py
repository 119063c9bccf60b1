import pytest

from services.filter.checks import check_language, dedup_key, parse_verdict


@pytest.mark.parametrize(
    "output,expected",
    [
        ("The problem gives all values.\nVerdict: Yes", True),
        ("Missing the rate.\nVerdict: No", False),
        ("Step 1 ... yes it mentions apples.\nFinal verdict: **No**", False),
        ("Reasoning.\n\nYes", True),
        ("Reasoning...\nNo.", False),
        (r"So the answer is \boxed{Yes}", True),
        # a "yes" inside the reasoning is not a verdict (the paper code's bug)
        ("yes, this looks like math, but there is no question asked and we cannot say", None),
        ("", None),
        ("Verdict: Yes\nOn reflection the numbers contradict.\nVerdict: No", False),
        ("I think so", None),
    ],
)
def test_parse_verdict(output, expected):
    assert parse_verdict(output) is expected


@pytest.mark.parametrize(
    "text,ok,reason",
    [
        ("A train travels 60 km in 1.5 hours. What is its speed?", True, ""),
        ("The angle is 45° and the area is π × r² ≤ 10 – find r.", True, ""),
        ("“Quoted” and ’curly’ marks are fine: what is 3 ÷ 4?", True, ""),
        ("一个数加上5等于12，这个数是多少？", False, "non_english_script"),
        ("Сколько будет 2 + 2?", False, "non_english_script"),
        ("What is 2 + 2? 😀", False, "unexpected_characters"),
    ],
)
def test_language(text, ok, reason):
    got_ok, got_reason, _ = check_language(text)
    assert (got_ok, got_reason) == (ok, reason)


def test_dedup_key_normalizes_case_space_and_trailing_punct():
    assert dedup_key("What is  2+2?") == dedup_key("what is 2+2")
    assert dedup_key("What is 2+2?") != dedup_key("What is 2+3?")
