"""How an answer is written: one canonical string per answer, and exact numbers (pure Python, no sympy).

`canonical` rewrites surface forms that are cheap to settle without sympy, in this order:

- delimiters (`$`, `$$`, `\\(`, `\\[`), `\\displaystyle`, `\\dfrac`/`\\tfrac`/`\\cfrac`, `\\left`/`\\right`,
  `\\frac13` -> `\\frac{1}{3}`, `\\lt`/`\\gt`/`\\le`/`\\ge`/`\\leqslant`/`\\geqslant`;
- **constants**: `\\mathrm{e}`, `\\text{e}`, `\\operatorname{e}` -> `{e}`; the same for `i`; `\\mathrm{\\pi}`
  -> `\\pi`. They are values (Euler's number, the imaginary unit, pi), never units, so nothing below
  strips them;
- **thousands separators** inside a number: `1{,}234`, `11,\\! 111`, thin spaces (`1\\,000`, `1~000`,
  U+2009/U+202F) and plain spaces between 3-digit groups (`1 000 000`);
- spacing macros, degrees (`^\\circ`, `°`, `\\degree`), currency (`\\$`, a leading `$`);
- **percent**: `28 percent`, `28 %`, `28\\text{ percent}` -> `28\\%` (the comparison reads `x%` as
  both `x` and `x/100`, see `numbers_equal`);
- **magnitude words multiply** (never dropped): `1.5 million` -> `1500000`, `5 thousand` -> `5000`,
  `3 dozen` -> `36` (hundred, thousand, million, billion, trillion, quadrillion, dozen; exact);
- units: a trailing `\\text{...}` / unit word after a complete value is dropped (`5 \\text{ cm}`,
  `7 apples`, `\\textnormal{ miles}`, a gold `$125$ miles`) unless it is a constant, a magnitude
  word, a math word (`pi`, `squared`, ...) or holds a qualifier word (`or more`, `at least`:
  `QUALIFIER_WORDS`), or what remains would end in an operator (`3 + \\mathrm{i}` is never `3 +`);
- `x = 3` -> `3` when the gold is not an equation, `1e3` -> `1\\times 10^{3}`;
- **commas**: the symmetric decimal-comma rule of `rewards.numbers` (`canonical(..., list_gold=,
  decimal_comma=)` applies the reading that `rewards.math` chose from the other side): `1,234` is
  1234 and `2,4` is 2.4 against one number; against a list every comma between digits separates;
- a gold `name = value` is judged by `equation_rhs`; `or` between alternatives separates a set;
- mixed numbers `2 1/2`, `2\\frac{1}{2}` -> `\\frac{5}{2}`; U+2212 -> `-`; a leading `+` and a stray
  final backslash are dropped;
- multiple-choice letters `(B)`, `B.`, `\\textbf{(B)}` -> `B`.

Numbers (`parse_number` = `rewards.numbers.read_number`, `numbers_equal`): every form of the number
grammar (integers, decimals, `a/b`, `\\frac{a}{b}`, mixed numbers, scientific notation, percents) as
exact `Fraction`s. Two exact values compare exactly; when either is
written as a decimal, they are equal within a relative tolerance `DECIMAL_RTOL` (1e-6, the
relative counterpart of math-verify's 6 decimals). Never an absolute tolerance: `1e-10` != `2e-10`.
"""

from __future__ import annotations

import re
from fractions import Fraction

from rewards.numbers import (
    DECIMAL_COMMA_RE,
    MAGNITUDES,
    MIXED,
    THOUSANDS_COMMA_RE,
    Number,
    format_fraction,
    read_number,
    unify_signs,
)

DECIMAL_RTOL = Fraction(1, 10**6)
# Words that are mathematics, not units: never stripped after a number, allowed inside formulas.
MATH_WORDS = frozenset({
    "pi", "e", "i", "squared", "cubed", "factorial", "sqrt", "frac", "infty", "infinity", "inf", "and", "or",
    "sin", "cos", "tan", "cot", "sec", "csc", "sinh", "cosh", "tanh", "arcsin", "arccos", "arctan", "log", "ln",
    "exp", "lim", "max", "min", "gcd", "lcm", "det", "mod", "deg", "percent", "percentage", "pct",
    *MAGNITUDES, *(m + "s" for m in MAGNITUDES),
})
# Words that change what a value means (`5 or more`, `at least 5`, `x is positive`): text holding one
# is never a unit, so it is never stripped (`\boxed{5\text{ or more}}` is not 5).
QUALIFIER_WORDS = frozenset({
    "or", "and", "not", "no", "more", "less", "fewer", "than", "least", "most", "at", "about", "approximately",
    "roughly", "nearly", "almost", "around", "over", "under", "above", "below", "greater", "smaller", "larger",
    "between", "to", "up", "only", "is", "are", "plus", "minus", "times", "if", "when", "except", "unless",
})

# Words that may stand in a formula; a leftover magnitude word (`x thousand`) makes an answer text.
_FORMULA_WORDS = MATH_WORDS - set(MAGNITUDES) - {m + "s" for m in MAGNITUDES}

_LATEX_TOKEN_RE = re.compile(r"\\[a-zA-Z]+|\\.|\d(?:\s+(?=\d))?|\S")
_SPACING_RE = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad\b|~")  # not the `\\` of `\\ ` (a matrix row end)
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b")
_CONSTANT_RE = re.compile(r"\\(?:mathrm|text|textrm|operatorname|mathit|rm)\s*\{\s*(e|i|\\pi)\s*\}|\{\\rm\s+(e|i)\}")
_RELATION_MACROS = [
    (re.compile(r"\\lt(?![a-zA-Z])"), "<"), (re.compile(r"\\gt(?![a-zA-Z])"), ">"),
    (re.compile(r"\\leqslant(?![a-zA-Z])|\\le(?![a-zA-Z])"), r"\\leq"),
    (re.compile(r"\\geqslant(?![a-zA-Z])|\\ge(?![a-zA-Z])"), r"\\geq"),
    (re.compile(r"\\ne(?![a-zA-Z])"), r"\\neq"),
]
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|middle|big|Big|bigg|Bigg)(?![a-zA-Z])")
_FRAC_SHORT_RE = re.compile(r"\\frac\s*(\d)\s*(\d)")
# Digit groups joined by thin spaces / LaTeX separators: `1\,000`, `11,\! 111`, `1 000`.
_GROUPED_RE = re.compile(
    r"(?<![\d.,])[1-9]\d{0,2}(?:(?:\{,\}|,\\!\s*|\\[,!;: ]\s*|~|[ \u2009\u202f])\d{3})+(?![\d]|,\d)"
)
_GROUP_SEP_RE = re.compile(r"\{,\}|,\\!\s*|\\[,!;: ]\s*|~|[ \u2009\u202f]")
_PERCENT_WORD_RE = re.compile(r"\s*(?:\\(?:text|mbox|mathrm)\s*\{\s*(?:per\s?cent(?:age)?|pct)\s*\}|\bper\s?cent(?:age)?\b|\bpct\b)",
                              re.IGNORECASE)
_PERCENT_SIGN_RE = re.compile(r"\s*(?<!\\)%|\s+\\%")
_MAGNITUDE_RE = re.compile(
    r"^(-?\d+(?:\.\d+)?)((?:\s*(?:\\(?:text|mbox|mathrm|textrm)\s*\{\s*)?(?:"
    + "|".join(MAGNITUDES) + r")s?\b\s*\}?)+)",
    re.IGNORECASE,
)
_MAGNITUDE_WORD_RE = re.compile("|".join(MAGNITUDES), re.IGNORECASE)
_TRAILING_TEXT_RE = re.compile(r"^(.*?\S)\s*\\(?:text|mbox|mathrm|textrm|textbf|textit)\s*\{([^{}]*)\}(?:\^\{?\d\}?)?$", re.DOTALL)
_WHOLE_TEXT_RE = re.compile(r"^\\(?:text|textbf|mbox|mathrm|mathbf|textrm)\s*\{([^{}]*)\}$")
_UNIT_WORD_RE = re.compile(r"^(-?[\d.,/]+(?:\\%)?)\s*([a-zA-Z]{2,})(?:\^?\d)?(?:\s+([a-zA-Z]{2,}))?$")
_NUMBER_THEN_WORDS_RE = re.compile(r"^(.*?[\d}])\s*((?:[a-zA-Z]{2,}(?:\^?\d)?\s*){1,2})$")
_ENDS_IN_OPERATOR_RE = re.compile(r"(?:[-+*/^_{(,=<>&|]|\\(?:cdot|times|div|pm|mp|frac|sqrt|cup|cap|setminus))\s*$")
_EQUATION_LHS_RE = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?!=)")
_SCI_RE = re.compile(r"(-?\d+(?:\.\d+)?)[eE]([+-]?\d{1,3})")
_CHOICE_RE = re.compile(r"\(?([A-J])\)?[.:]?")
_CHOICE_WITH_TEXT_RE = re.compile(r"^(?:\(([A-Ja-j])\)|([A-J])(?:[.:)]|\s))\s*(.*)$", re.DOTALL)
_OPERATOR_START_RE = re.compile(r"[-+*/^=<>]|\\(?:cdot|times|div|pm|leq?|geq?)(?![a-zA-Z])")
_OTHER_CHOICE_RE = re.compile(r"(?<![A-Za-z])\(?[A-J]\)?(?![A-Za-z])")
_AND_OR_RE = re.compile(r"(?<=[)\]])\s*or\s*(?=[(\[])|\s*\\(?:text|mbox|textrm)\s*\{\s*(?:and|or)\s*\}\s*|\s+(?:and|or)\s+|,\s*(?:and|or)\s+")
_MACRO_RE = re.compile(r"\\[a-zA-Z]+")
_ENVIRONMENT_RE = re.compile(r"\\(?:begin|end)\s*\{[a-zA-Z*]+\}")
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm|mbox|textit)\s*\{([^{}]*)\}")
_WORD_RE = re.compile(r"[a-zA-Z]{4,}")


_PLUS_SIGN_RE = re.compile(r"^\+\s*(?=[\d.])")
_STRAY_BACKSLASH_RE = re.compile(r"(?<!\\)\\\s*$")
_LEADING_MIXED_RE = re.compile(rf"^(-?)({MIXED})(?=\s|\\text|\\%|%|$)")


def _group_end(s: str) -> int | None:
    """Index of the `}` closing the `{` at s[0] (escaped `\\{ \\}` do not count), or None."""
    depth, i = 0, 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(s[i], 0)
        if depth == 0:
            return i
        i += 1
    return None


# An equation's left side that only names the answer: letters, subscripts, ratios, `f(x)`, `\angle ABC`.
_LABEL_RE = re.compile(r"(?:[A-Za-z]+|\\(?:angle|measuredangle|overline|widehat|triangle|text|mathrm)(?![a-zA-Z])"
                       r"|_\{?[\w,]+\}?|\{[A-Za-z ]*\}|[:()', ]|\\[,;!])+")


def equation_rhs(s: str) -> str | None:
    """The right-hand side(s) of a gold that states its answer as `name = value` (`AB:CD=3:8` -> `3:8`,
    `S_{MBCN}:S=7:32` -> `7:32`, `f(x) = 2x`, `y_{1}=A, y_{2}=B` -> `A, B`, a chain `1 = \\zzz = x = 0` -> `0`: its last link
    names the value); None when the part before the last `=` is anything but a name (`x^2+y^2=1` is an equation to match as a whole) or there is no `=`."""
    out = []
    for item in _split_top_level(s):
        parts = item.split("=")
        if len(parts) < 2 or not _LABEL_RE.fullmatch(parts[-2].strip()):  # a chain ends in `name = value`
            return None
        rhs = parts[-1].strip()
        if not rhs or re.search(r"[<>]|\\[lg]eq|\\neq", rhs):
            return None
        out.append(rhs)
    return ", ".join(out)


def _mixed_to_fraction(m: re.Match) -> str:
    n = read_number(m.group(0))
    return m.group(0) if n is None else format_fraction(n.value)


_BLOCK_THEN_WORDS_RE = re.compile(r"\$([^$]+)\$[ \t]*([A-Za-z][A-Za-z .]*)")


def latex_tokens(s: str) -> tuple[str, ...]:
    """LaTeX tokens (macros, escaped chars, single non-space chars). Whitespace in math mode only
    ends macro names, so equal token sequences mean the same formula: `(1, 2]` == `(1,2]`. A space
    between two digits is kept (a digit token `"1 "`), so `1 9 9` is not `199`."""
    return tuple(t if not t[0].isdigit() else t[0] + (" " if len(t) > 1 else "") for t in _LATEX_TOKEN_RE.findall(s))


def top_level_commas(s: str) -> int:
    """Commas outside (), [], {} and \\{ \\}: `1, 2` has one, `(1, 2)` none."""
    depth, n = 0, 0
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            n += 1
    return n


def _split_top_level(s: str, *, digit_commas: bool = True) -> list[str]:
    """`s` split at its top-level commas (items stripped); `[s]` when there are none.
    digit_commas=False keeps a comma between two digits inside its item (`y = 1,000`)."""
    if top_level_commas(s) == 0:
        return [s]
    items, depth, cur = [], 0, []
    for k, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        if c == "," and depth == 0 and (digit_commas or not (s[k - 1 : k].isdigit() and s[k + 1 : k + 2].isdigit())):
            items.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
    items.append("".join(cur).strip())
    return items


def is_list(s: str) -> bool:
    """A comma-separated list answer (`1, 2`, `-2,1`), not a thousands number like `1,234`."""
    return top_level_commas(s) > 0 and not THOUSANDS_COMMA_RE.fullmatch(s.strip())


def _ungroup(m: re.Match) -> str:
    return _GROUP_SEP_RE.sub("", m.group(0))


def _apply_magnitude(s: str) -> str:
    """`1.5 million dollars` -> `1500000 dollars` (exact); words after other values stay."""
    m = _MAGNITUDE_RE.match(s)
    if not m:
        return s
    value = Fraction(m.group(1))
    for w in _MAGNITUDE_WORD_RE.findall(m.group(2)):
        value *= MAGNITUDES[w.lower()]
    text = str(value.numerator) if value.denominator == 1 else format_fraction(value)
    return (text + " " + s[m.end():].strip()).strip()


def _strip_units(s: str) -> str:
    """Drop a trailing `\\text{unit}` / unit word after a complete value (see module docstring)."""
    for _ in range(3):
        m = _TRAILING_TEXT_RE.match(s)
        if not m:
            break
        word = m.group(2).strip().lower()
        rest = m.group(1).strip()
        if (not word or word in MATH_WORDS or any(ch.isdigit() for ch in word) or _MAGNITUDE_WORD_RE.search(word)
                or _ENDS_IN_OPERATOR_RE.search(rest) or QUALIFIER_WORDS.intersection(re.findall(r"[a-z]+", word))):
            break
        s = rest
    m = _WHOLE_TEXT_RE.match(s)
    if m:
        s = _apply_magnitude(m.group(1).strip())  # `\text{5 thousand}` -> 5000
    m = _NUMBER_THEN_WORDS_RE.match(s)  # `\frac{1}{2} meters`, `2 \times 10^{3} kg`: any number of the grammar
    if m and read_number(m.group(1)) is not None and not any(
            w.lower() in MATH_WORDS or w.lower() in QUALIFIER_WORDS for w in m.group(2).split()):
        return m.group(1)
    m = _UNIT_WORD_RE.match(s)
    if m and not any(w and (w.lower() in MATH_WORDS or w.lower() in QUALIFIER_WORDS) for w in (m.group(2), m.group(3))):
        s = m.group(1)
    return s


def canonical(ans: str, *, strip_equation: bool = True, list_gold: bool = False, decimal_comma: bool = False) -> str:
    """Rewrite surface forms (see module docstring) into one canonical string. Never raises.

    strip_equation: `x = 3` -> `3` (set when the gold is not an equation).
    list_gold: the gold is a list, so commas between digits separate list items (`1,234` -> `1, 234`).
    decimal_comma: read `0,111` / `1000,99` as decimals (set for a prediction whose gold is one value).
    """
    s = unify_signs(ans).strip()
    s = _STRAY_BACKSLASH_RE.sub("", s).strip()  # a scraped gold `185\`: the lone final backslash is no macro
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    s = _PLUS_SIGN_RE.sub("", s)  # `+7 meters`: an explicit plus sign is the number itself
    while s.startswith("{") and _group_end(s) == len(s) - 1:  # `{35 cm,4}`: a bare group is its content
        s = s[1:-1].strip()
    m = _BLOCK_THEN_WORDS_RE.fullmatch(s)
    if m:  # a gold `$125$ miles`: the block's value with its words as a trailing \text (units stay units)
        s = f"{m.group(1).strip()}\\text{{ {m.group(2).strip()}}}"
    s = s.replace("\\textnormal", "\\text")  # `\textnormal{ miles}` is `\text{ miles}`
    s = s.replace("\\displaystyle", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _CONSTANT_RE.sub(lambda m: "\\pi" if (m.group(1) or m.group(2)) == "\\pi" else "{" + (m.group(1) or m.group(2)) + "}", s)
    for rx, rep in _RELATION_MACROS:
        s = rx.sub(rep, s)
    s = _GROUPED_RE.sub(_ungroup, s)
    s = s.replace("{,}", ",")
    s = _SPACING_RE.sub(" ", s)
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\$", "").strip()
    if s.startswith("$") and not s.endswith("$"):
        s = s[1:].strip()  # currency: $18
    s = s.rstrip(".").strip()
    if strip_equation:  # `x = 3` -> 3; in a list each item: `x = 5, x = -5` -> `5, -5`
        items = _split_top_level(s, digit_commas=False)
        if any(_EQUATION_LHS_RE.match(it) for it in items):
            items = [it[m.end():].strip() if (m := _EQUATION_LHS_RE.match(it)) else it for it in items]
            s = ", ".join(items)
    s = _LEADING_MIXED_RE.sub(_mixed_to_fraction, s)  # `2 1/2 cups`, `2\frac{1}{2}` -> `\frac{5}{2} cups`
    s = _PERCENT_WORD_RE.sub("\\%", s)
    s = _PERCENT_SIGN_RE.sub("\\%", s)
    s = _apply_magnitude(s)
    s = _strip_units(s)
    s = _AND_OR_RE.sub(", ", s)
    s = re.sub(r",(?:\s*,)+", ",", s)  # `19, 46, \text{ and } 82`: the comma before "and" is not an empty item
    s = s.rstrip(".").strip()
    m = _SCI_RE.fullmatch(s)
    if m:  # 1e3 -> 1\times 10^{3} (latex2sympy reads `1e3` as 1*e*3)
        s = f"{m.group(1)}\\times 10^{{{m.group(2)}}}"
    if list_gold:
        s = re.sub(r"(?<=\d),(?=\d)", ", ", s)
    elif THOUSANDS_COMMA_RE.fullmatch(s):
        s = s.replace(",", "")
    elif decimal_comma and DECIMAL_COMMA_RE.fullmatch(s):
        s = s.replace(",", ".")
    m = _CHOICE_RE.fullmatch(s)
    if m:
        s = m.group(1)
    return re.sub(r"\s+", " ", s).strip()


def choice_letter(s: str) -> str | None:
    """The multiple-choice letter of an answer: `B`, `(b)`, `(B) 42`, `C: the second option`.
    None when the text after the letter names another choice (`A or B`), starts with an operator
    (`A + 1`), or there is no letter."""
    s = _TEXT_WRAPPER_RE.sub(r"\1", s).strip()
    if len(s) == 1 and s.upper() in "ABCDEFGHIJ":
        return s.upper()
    m = _CHOICE_WITH_TEXT_RE.match(s)
    if not m:
        return None
    letter, rest = (m.group(1) or m.group(2)).upper(), m.group(3)
    if _OTHER_CHOICE_RE.search(rest) or _OPERATOR_START_RE.match(rest):
        return None  # `A or B`, `A + 1`: not a letter with its option text
    return letter


def is_choice_letter(s: str) -> bool:
    return len(s) == 1 and "A" <= s <= "J"


def is_text(s: str) -> bool:
    """True for an answer written in words: a word of 4+ letters outside macro names that is not
    a math word (`Monday`, `no solution`, `5 apples and pears`). Words are compared as words,
    never parsed into products of one-letter symbols."""
    bare = _MACRO_RE.sub(" ", _ENVIRONMENT_RE.sub(" ", s))
    return any(w.lower() not in _FORMULA_WORDS for w in _WORD_RE.findall(bare))


def text_key(s: str) -> str:
    """Comparison key of a text answer: lowercase words, no `\\text{}` wrappers, braces or spaces."""
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm|mathbf|textrm|textit)\s*", "", s)
    return re.sub(r"[\s{}.,;:!?\"'`]+", " ", s).strip().lower()


def parse_number(s: str) -> Number | None:
    """`Number` of a whole canonical string (`rewards.numbers.read_number`: integers, decimals,
    `a/b`, `\\frac{a}{b}`, mixed numbers, `a\\times 10^{k}`, `5e-3`, each optionally with `\\%`);
    None for anything else. Commas were settled by `canonical` (`2,4` here is not a number)."""
    return read_number(s, decimal_comma=False)


def close(a: Fraction, b: Fraction, decimal: bool) -> bool:
    """Exact equality, or |a - b| <= DECIMAL_RTOL * max(|a|, |b|) when a decimal is involved."""
    if a == b:
        return True
    return decimal and abs(a - b) <= DECIMAL_RTOL * max(abs(a), abs(b))


def numbers_equal(a: Number, b: Number) -> bool:
    """Equality of two numbers. A percent on one side only is read both ways (`28\\%` equals 28
    and 0.28); on both sides the values compare as written."""
    decimal = a.decimal or b.decimal
    if a.percent == b.percent:
        return close(a.value, b.value, decimal)
    pct, other = (a, b) if a.percent else (b, a)
    return close(pct.value, other.value, decimal) or close(pct.value / 100, other.value, decimal)
