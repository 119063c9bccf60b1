import pytest

from services.filter.checks import (
    check_language,
    dedup_key,
    normalize_typography,
    parse_verdict,
)


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
        # markdown, boxed forms, trailing whitespace and punctuation
        ("All quantities are given.\nVerdict: **Yes**", True),
        ("The rate is missing.\nFinal answer: No.", False),
        (r"Everything needed is stated. \boxed{Yes}", True),
        (r"It contradicts itself.\n\boxed{\text{No}}", False),
        ("Reasoning.\nVerdict: Yes.  \n\n  ", True),
        ("Reasoning.\n**No**!!", False),
        ("Reasoning.\nVerdict - yes", True),
        # "yes" in the reasoning, then a final No
        ("Yes, it is a math question. But the speed is never given, so it cannot be solved.\nVerdict: No", False),
        ("Is it math? Yes. Is it solvable? The total is unknown. So, no.", False),
        # both words in the last line: an echoed format is no verdict, an explicit one is
        ("The problem seems fine.\nVerdict: Yes/No", None),
        ("The problem seems fine.\nVerdict: Yes or No", None),
        ("Not a clear yes at first, but on balance. Verdict: No", False),
        # neither word
        ("The problem is well posed and has a unique answer.", None),
        # reasoning models: only what follows </think> counts
        ("<think>Verdict: No ... wait, the rate is given.</think>\nVerdict: Yes", True),
    ],
)
def test_parse_verdict(output, expected):
    assert parse_verdict(output) is expected


@pytest.mark.parametrize(
    "text,ok,reason",
    [
        ("A train travels 60 km in 1.5 hours. What is its speed?", True, ""),
        # math typography is English math text
        ("The angle is 45° and the area is π × r² ≤ 10 – find r.", True, ""),
        ("“Quoted” and ’curly’ marks are fine: what is 3 ÷ 4?", True, ""),
        ("In △ABC, ∠A = 60°, AB = 5 and BC ≥ 3. Find the largest possible AC…", True, ""),
        ("Let f: ℝ → ℝ satisfy f(x + y) = f(x) + f(y) for all x, y ∈ ℝ. Find f(0).", True, ""),
        ("Let α, β be the roots of x² − 5x + 6 = 0. Find α² + β².", True, ""),
        ("A café sells 30 croissants at €2 each. How much money does it make?", True, ""),
        ("What is 2+2？", True, ""),  # fullwidth punctuation folds to ASCII
        (r"Find all $x$ with $x \le 3$ and $\frac{1}{x} \ge 2$.", True, ""),  # \le is not French "le"
        # stray accented names do not make a question foreign
        ("Zoë has 3 apples and buys 4 more. How many apples does she have?", True, ""),
        ("Zoë, Chloé, Renée and José each have 5 apples. How many apples do they have in total?", True, ""),
        # other writing systems
        ("一个数加上5等于12，这个数是多少？", False, "non_english_script"),
        ("Сколько будет 2 + 2?", False, "non_english_script"),
        ("Η περίμετρος ενός τετραγώνου είναι 20. Ποιο είναι το εμβαδόν;", False, "non_english_script"),
        ("ある数に5を足すと12になります。その数は何ですか？", False, "non_english_script"),
        ("What is 2 + 2? The answer is ٤", False, "non_english_script"),
        # other Latin-script languages, with or without accents
        ("Combien de pommes Marie a-t-elle après avoir acheté 3 pommes ?", False, "non_english_language"),
        ("Un train roule pendant 2 heures. Quelle distance parcourt-il ?", False, "non_english_language"),
        ("¿Cuántas manzanas tiene Juan si compra 5 más?", False, "non_english_language"),
        ("Wie viele Äpfel hat Anna, wenn sie 3 kauft?", False, "non_english_language"),
        ("Pociąg jedzie 60 km w ciągu 1,5 godziny. Jaka jest jego prędkość?", False, "non_english_language"),
        # anything else that is not math notation
        ("What is 2 + 2? 😀", False, "unexpected_characters"),
        ("What is 2 + 2?\x07", True, ""),  # ASCII control characters are left to the length/judge checks
    ],
)
def test_language(text, ok, reason):
    got_ok, got_reason, detail = check_language(text)
    assert (got_ok, got_reason) == (ok, reason), detail


def test_language_detail_names_the_evidence():
    _, _, detail = check_language("Combien de pommes Marie a-t-elle après avoir acheté 3 pommes ?")
    assert "combien" in detail and "après" in detail and "English function words 0" in detail
    assert check_language("Сколько будет 2 + 2?")[2].startswith("Ско")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("3 × 4 ÷ 2 ≤ 7 ≥ 1 ≠ 0", r"3 \times 4 \div 2 \le 7 \ge 1 \ne 0"),
        ("The area is πr².", r"The area is \pi r^2."),  # a space keeps \pi one command
        ("An angle of 30° in △ABC", r"An angle of 30^\circ in \triangle ABC"),
        ("“Quoted” and it’s 5–7 − 2…", "\"Quoted\" and it's 5-7 - 2..."),
        ("√2 and ½", r"\sqrt2 and 1/2"),
        ("Zoë pays €5.", "Zoë pays €5."),  # no table entry: kept
        ("plain ASCII $x^2$ stays", "plain ASCII $x^2$ stays"),
    ],
)
def test_normalize_typography(text, expected):
    assert normalize_typography(text) == expected


def test_normalized_text_passes_the_language_check():
    text = "Let α, β be the roots of x² − 5x + 6 = 0 with α ≤ β; find “α × β”."
    out = normalize_typography(text)
    assert out.isascii() and check_language(out)[0]


def test_dedup_key_normalizes_case_space_and_trailing_punct():
    assert dedup_key("What is  2+2?") == dedup_key("what is 2+2")
    assert dedup_key("What is 2+2?") != dedup_key("What is 2+3?")
