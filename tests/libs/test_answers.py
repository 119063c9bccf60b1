from libs.answers import equivalent, extract_answer, extract_boxed, group_equivalent


def test_boxed_simple_and_last_wins():
    assert extract_boxed(r"so \boxed{3} but actually \boxed{4}.") == "4"


def test_boxed_nested_braces():
    assert extract_boxed(r"The answer is \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{\sqrt{\frac{a}{b}} + {c}}") == r"\sqrt{\frac{a}{b}} + {c}"


def test_boxed_none_and_empty_and_unbalanced():
    assert extract_boxed("no box here, answer 5") is None
    assert extract_boxed(r"\boxed{}") is None
    # a truncated last box falls back to the previous balanced one
    assert extract_boxed(r"\boxed{7} then \boxed{\frac{1}{2") == "7"


def test_fbox_and_escaped_braces():
    assert extract_boxed(r"\fbox{12}") == "12"
    assert extract_boxed(r"\boxed{\{1,2\}}") == r"\{1,2\}"


def test_extract_answer_fallback_only_when_asked():
    text = "Adding them up, the final answer is 1,250."
    assert extract_answer(text) == ("", "")
    assert extract_answer(text, fallback=True) == ("1250", "answer_is")
    assert extract_answer(r"\boxed{9} and the answer is 3", fallback=True) == ("9", "boxed")


def test_equivalence():
    assert equivalent("0.5", r"\frac{1}{2}")
    assert equivalent("1/2", "0.5")
    assert equivalent("12", "12.0")
    assert not equivalent("3", "4")
    assert not equivalent("", "")


def test_grouping():
    assert group_equivalent(["2", "2.0", "3", "", r"\frac{4}{2}"]) == [0, 0, 1, -1, 0]


def test_two_integers_are_compared_without_the_parser():
    from libs.answers import _verified

    before = _verified.cache_info()
    assert not equivalent("54", "55") and equivalent("054", "54") and equivalent("+7", "7")
    assert not equivalent("-3", "3") and equivalent("1,000", "1000")
    after = _verified.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)  # math-verify never asked
    assert equivalent("12", "12.0")  # not two integers: still math-verify's call
