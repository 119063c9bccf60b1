"""Question checks of the filter stage: language, typography normalization, exact-duplicate keys,
solvability verdict parsing.

Each check returns a ``FilterVerdict``-shaped tuple ``(passed, reason, detail)``; reasons are
stable machine-readable strings that the coordinator counts per run.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

# --------------------------------------------------------------------------------------------
# language

# Punctuation (Unicode category Po) that English math text uses; other Po characters (CJK
# full stops, inverted question marks...) count as unexpected.
_ALLOWED_PO = set("…·•′″‴‰‱§¶‖‼⁄")
# Blocks whose symbols (So/Ps/Pe) are math or technical notation, not pictographs.
_SYMBOL_BLOCKS = (
    (0x2100, 0x214F),  # letterlike symbols: ℝ ℕ ℓ ℃ ℉
    (0x2190, 0x21FF),  # arrows
    (0x2200, 0x22FF),  # mathematical operators
    (0x2300, 0x2319),  # miscellaneous technical: ⌈ ⌉ ⌊ ⌋ (before the ⌚ ⌛ emoji)
    (0x25A0, 0x25FF),  # geometric shapes: △ □ ○
    (0x27C0, 0x27EF),  # miscellaneous mathematical symbols A: ⟨ ⟩ ⟂
    (0x2980, 0x2AFF),  # miscellaneous mathematical symbols B, supplemental operators
    (0x1D400, 0x1D7FF),  # mathematical alphanumeric symbols: 𝑥 𝐀
)
_OTHER_SYMBOLS = set("°µ")

# Function words of English and of the Latin-script languages a multilingual generator drifts
# into most (French, Spanish, German, Italian, Portuguese, Dutch). Words that are also English
# (a, in, on, die, was, do, son, pour, van...) and single letters (math variables) are left out
# of both lists so that neither side counts them.
_EN_WORDS = frozenset(
    ["the", "is", "are", "were", "be", "been", "of", "and", "to", "what", "how", "many", "much", "if", "has", "have", "had", "does", "did", "with", "for", "that", "this", "it", "its", "his", "her", "he", "she", "they", "their", "them", "there", "each", "by", "from", "at", "which", "find", "will", "than", "more", "less", "after", "before", "total", "every", "who", "when", "as", "or", "all", "some", "any", "into", "out", "then", "what's", "many", "would", "could", "should", "can", "not", "but", "per", "its", "other", "same", "between"]
)
_FOREIGN_WORDS = frozenset(
    ["le", "la", "les", "des", "du", "un", "une", "est", "et", "dans", "avec", "combien", "quel", "quelle", "quels", "quelles", "sont", "pas", "au", "aux", "ce", "cette", "qui", "que", "il", "elle", "ils", "elles", "leur", "pendant", "chaque", "apres", "après", "était", "avoir", "nombre", "el", "los", "las", "del", "una", "uno", "es", "por", "para", "cuantos", "cuántos", "cuantas", "cuántas", "cuanto", "cuánto", "tiene", "tienen", "cual", "cuál", "cada", "más", "mas", "entre", "si", "sus", "der", "das", "und", "ist", "ein", "eine", "einen", "wie", "viele", "mit", "wenn", "sie", "sind", "nicht", "auch", "dann", "wird", "jede", "jeder", "von", "zu", "dem", "di", "che", "della", "delle", "degli", "gli", "sono", "quanti", "quante", "ogni", "anche", "os", "uma", "quantos", "quantas", "não", "tem", "cada", "het", "een", "hoeveel", "zijn", "niet", "ik"]
)
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def _in_blocks(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _SYMBOL_BLOCKS)


def _script(ch: str) -> str:
    """First word of the character's Unicode name: LATIN, GREEK, CJK, CYRILLIC, HIRAGANA..."""
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else "UNKNOWN"


@lru_cache(maxsize=8192)
def _char_class(ch: str) -> str:
    """'ok' (ASCII or math typography), 'latin' (accented Latin letter), 'greek', 'script'
    (a letter of another writing system) or 'other' (emoji, control, CJK punctuation...)."""
    if ch.isascii():
        return "ok"
    cp = ord(ch)
    cat = unicodedata.category(ch)
    if cat.startswith("L"):
        if _in_blocks(cp):
            return "ok"
        script = _script(ch)
        if script == "LATIN":
            # ﬁ-ligatures and ordinal indicators fold to ASCII; real accented letters do not.
            return "ok" if unicodedata.normalize("NFKC", ch).isascii() else "latin"
        if script == "GREEK":
            return "greek"
        if cat == "Lm" and script == "MODIFIER":  # ʼ ˈ used as apostrophes / stress marks
            return "ok"
        return "script"
    if cat == "Nd" and not unicodedata.normalize("NFKC", ch).isascii():
        return "script"  # digits of another script (Arabic-Indic, Devanagari...)
    if unicodedata.normalize("NFKC", ch).isascii():
        return "ok"  # fullwidth forms, superscript digits, no-break spaces
    if cat in ("Sm", "Sc", "Sk", "No", "Pd", "Pi", "Pf", "Zs", "Mn", "Me", "Cf"):
        return "ok"
    if cat == "Po" and ch in _ALLOWED_PO:
        return "ok"
    if cat in ("So", "Ps", "Pe") and (_in_blocks(cp) or ch in _OTHER_SYMBOLS):
        return "ok"
    return "other"


def check_language(text: str) -> tuple[bool, str, str]:
    """Keep English math text; reject other writing systems and other Latin-script languages.

    Rules, in order:

    * a letter of a non-Latin writing system (CJK, Cyrillic, Arabic, Hebrew, Devanagari, kana,
      Hangul, ...) rejects with ``non_english_script``. Greek letters are math symbols (α, π, Δ)
      and pass, unless they form words (two or more runs of three or more Greek letters);
    * Latin-script text is judged by evidence, not by the mere presence of an accent: every word
      with a non-ASCII letter (é, ñ, ü, ß, ł) and every function word of French / Spanish /
      German / Italian / Portuguese / Dutch counts as foreign evidence; the question is rejected
      with ``non_english_language`` when there are at least two pieces of foreign evidence and
      more of them than English function words. So "Zoë and Renée have 5 apples each. How many
      apples do they have?" passes (English function words outnumber two accented names) while
      "Combien de pommes Marie a-t-elle ?" and an unaccented "Un train roule pendant 2 heures"
      do not. LaTeX commands (``\\le``, ``\\frac``) are not words;
    * other characters outside ASCII must be math or typographic notation: math symbols and
      operators (× ÷ ≤ ≥ ≠ √ ∞ ∑ → ℝ), currency, superscripts and vulgar fractions (² ½),
      dashes, curly quotes, primes, the degree sign, geometric shapes (△ □), combining marks,
      fullwidth forms and no-break spaces. Anything else (emoji, control characters, CJK
      punctuation) rejects with ``unexpected_characters``.
    """
    text = unicodedata.normalize("NFC", text)
    plain = text.isascii()  # the common case: no character needs a look-up
    foreign_script: list[str] = []
    other: list[str] = []
    greek_run, greek_words = 0, 0
    for ch in "" if plain else text:
        kind = _char_class(ch)
        if kind == "greek":
            greek_run += 1
            greek_words += greek_run == 3
            continue
        greek_run = 0
        if kind == "script":
            foreign_script.append(ch)
        elif kind == "other":
            other.append(ch)
    if foreign_script:
        return False, "non_english_script", "".join(dict.fromkeys(foreign_script))[:32]
    if greek_words >= 2:
        return False, "non_english_script", f"{greek_words} Greek words"
    if plain:  # ASCII: lowercasing keeps the word spans, no accents; under two foreign words, English
        words = _WORD.findall(_LATEX_CMD.sub(" ", text).lower())
        foreign = [w for w in words if w in _FOREIGN_WORDS]
        if len(foreign) < 2:
            return True, "", ""
        accented = []
    else:
        words = [w.lower() for w in _WORD.findall(_LATEX_CMD.sub(" ", text))]
        accented = [w for w in words if any(_char_class(ch) == "latin" for ch in w)]
        foreign = [w for w in words if w in _FOREIGN_WORDS and w.isascii()]
    english = sum(1 for w in words if w in _EN_WORDS)
    evidence = len(accented) + len(foreign)
    if evidence >= 2 and evidence > english:
        shown = ", ".join(dict.fromkeys(accented + foreign))
        detail = f"foreign words {evidence} ({shown[:200]}), English function words {english}"
        return False, "non_english_language", detail
    if other:
        return False, "unexpected_characters", "".join(dict.fromkeys(other))[:32]
    return True, "", ""


# --------------------------------------------------------------------------------------------
# typography -> ASCII / LaTeX

_GREEK = {
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "ζ": "zeta", "η": "eta",
    "θ": "theta", "ι": "iota", "κ": "kappa", "λ": "lambda", "μ": "mu", "ν": "nu", "ξ": "xi",
    "π": "pi", "ρ": "rho", "σ": "sigma", "ς": "varsigma", "τ": "tau", "υ": "upsilon", "φ": "phi",
    "χ": "chi", "ψ": "psi", "ω": "omega", "Γ": "Gamma", "Δ": "Delta", "Θ": "Theta", "Λ": "Lambda",
    "Ξ": "Xi", "Π": "Pi", "Σ": "Sigma", "Υ": "Upsilon", "Φ": "Phi", "Ψ": "Psi", "Ω": "Omega",
}  # fmt: skip
TYPOGRAPHY_MAP: dict[str, str] = {
    **{k: "\\" + v for k, v in _GREEK.items()},
    "×": r"\times", "÷": r"\div", "·": r"\cdot", "⋅": r"\cdot", "≤": r"\le", "≥": r"\ge",
    "≠": r"\ne", "≈": r"\approx", "≡": r"\equiv", "±": r"\pm", "∓": r"\mp", "√": r"\sqrt",
    "∞": r"\infty", "∠": r"\angle", "△": r"\triangle", "∈": r"\in", "∉": r"\notin",
    "⊂": r"\subset", "⊆": r"\subseteq", "∪": r"\cup", "∩": r"\cap", "∑": r"\sum", "∏": r"\prod",
    "∫": r"\int", "→": r"\to", "⇒": r"\Rightarrow", "∴": r"\therefore", "⊥": r"\perp",
    "∥": r"\parallel", "∝": r"\propto", "∅": r"\emptyset", "ℝ": r"\mathbb{R}", "ℕ": r"\mathbb{N}",
    "ℤ": r"\mathbb{Z}", "ℚ": r"\mathbb{Q}", "°": r"^\circ", "℃": r"^\circ C", "℉": r"^\circ F",
    "–": "-", "—": "-", "−": "-", "‐": "-", "‑": "-", "‒": "-",
    "’": "'", "‘": "'", "ʼ": "'", "“": '"', "”": '"', "„": '"', "′": "'", "″": "''",
    "…": "...", "½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4",
    "⁰": "^0", "¹": "^1", "²": "^2", "³": "^3", "⁴": "^4", "⁵": "^5", "⁶": "^6", "⁷": "^7",
    "⁸": "^8", "⁹": "^9", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2002": " ",
    "\u2003": " ", "\u200b": "", "\u00ad": "", "\ufeff": "",
}  # fmt: skip
_TYPO_RE = re.compile("|".join(re.escape(k) for k in sorted(TYPOGRAPHY_MAP, key=len, reverse=True)))


def normalize_typography(text: str) -> str:
    """Rewrite math typography as ASCII / LaTeX: × → ``\\times``, ≤ → ``\\le``, π → ``\\pi``,
    ° → ``^\\circ``, ² → ``^2``, curly quotes → straight, dashes and minus → ``-``.

    Commands are written bare (no ``$...$`` is added, existing math delimiters are kept), with a
    space after a command that a letter follows (πr → ``\\pi r``) so it stays one command.
    Characters without an entry in :data:`TYPOGRAPHY_MAP` (accented names, currency) are kept.
    """
    text = unicodedata.normalize("NFC", text)

    def sub(m: re.Match[str]) -> str:
        rep = TYPOGRAPHY_MAP[m.group(0)]
        nxt = text[m.end() : m.end() + 1]
        if rep[-1:].isalpha() and "\\" in rep and nxt.isascii() and nxt.isalpha():
            rep += " "
        return rep

    return _TYPO_RE.sub(sub, text)


# --------------------------------------------------------------------------------------------
# exact duplicates

_WS = re.compile(r"\s+")


def normalize_for_dedup(text: str) -> str:
    """Case-, whitespace- and trailing-punctuation-insensitive form for exact dedup."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = _WS.sub(" ", t).strip()
    return t.rstrip(" .?!")


def dedup_key(text: str) -> str:
    return hashlib.sha256(normalize_for_dedup(text).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------
# solvability verdict

_YN = r"(yes|no)\b"
_VERDICT_RE = re.compile(
    r"(?:final\s+)?(?:verdict|answer|judg(?:e)?ment|conclusion|decision)\s*(?:is)?\s*[:：\-=]?\s*"
    r"[\*_`\"'(\[]*\s*" + _YN,
    re.IGNORECASE,
)
_BOXED_RE = re.compile(r"\\boxed\{\s*(?:\\text(?:bf)?\{|\\mathrm\{)?\s*(yes|no)\s*\}?\s*\}", re.IGNORECASE)
# A last line that is just the word, or that ends a sentence of reasoning with it ("so, yes.").
_BARE_RE = re.compile(r"^[\W_]*(yes|no)[\W_]*$", re.IGNORECASE)
_CONCLUDING_RE = re.compile(
    r"\b(?:so|thus|hence|therefore|overall|in\s+conclusion)\b[\s,:]*(?:the\s+answer\s+is\s+|it\s+is\s+)?[\*_`\"']*"
    r"(yes|no)[\*_`\"']*[\s.!]*$",
    re.IGNORECASE,
)
# The instruction's format echoed back ("Verdict: Yes/No", "Yes or No") is not a verdict.
_ECHO_RE = re.compile(r"[\*_`\"']*yes[\*_`\"']*\s*(?:/|\bor\b|\|)\s*[\*_`\"']*no\b[\*_`\"']*", re.IGNORECASE)
_THINK_END = "</think>"


def parse_verdict(output: str) -> bool | None:
    """The judge's FINAL Yes/No verdict, or None when there is none.

    Only the conclusion counts: the last "Verdict: Yes/No"-style statement, a boxed Yes/No, a
    last line that is just Yes or No, or a last line that ends "so / thus / therefore, yes".
    A "yes" somewhere in the reasoning is not a verdict (the public ScaleQuest code's bug); an
    echoed format such as "Verdict: Yes/No" is no verdict either; text inside a closed
    ``<think>`` block is reasoning and is skipped.
    """
    text = output
    if _THINK_END in text:
        text = text.rsplit(_THINK_END, 1)[1]
    text = _ECHO_RE.sub(" ", text).strip()
    if not text:
        return None
    candidates: list[tuple[int, str]] = []
    for rx in (_VERDICT_RE, _BOXED_RE):
        candidates += [(m.start(), m.group(1)) for m in rx.finditer(text)]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    tail = _BARE_RE.match(last) or _CONCLUDING_RE.search(last)
    if tail:
        candidates.append((len(text), tail.group(1)))
    if not candidates:
        return None
    # The explicit verdict must be in the conclusion: last one wins.
    _, word = max(candidates)
    return word.lower() == "yes"


#: The filter's checks in the order the stage runs them, with the rejection reasons each can
#: give (verdict ``check`` names and ``reason`` strings; reports and dashboards read this).
CHECK_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("length", ("too_short", "too_long")),
    ("language", ("non_english_script", "non_english_language", "unexpected_characters")),
    ("decontam", ("contaminated",)),
    ("dedup", ("duplicate", "near_duplicate")),
    ("solvability", ("judge_unsolvable", "judge_unparseable")),
    ("difficulty", ("too_easy",)),
)
