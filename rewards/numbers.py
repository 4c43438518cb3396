"""How numbers are written: one grammar, read the same way in completions and golds (pure Python).

Used by the lenient fallback (`rewards.extract`: which span of prose is the last number), by the
canonicaliser (`rewards.normalize.canonical`: one string per written number) and by the exact
comparison (`rewards.normalize.parse_number`), so the marker path and the fallback path read
`−7`, `2 1/2` or `2 × 10^3` identically.

Grammar (each piece is a named regex below; `NUMBER_RE` finds a number in prose, `read_number`
reads a whole string as one):

    number    := sign? currency? body exponent? percent? magnitude*
    sign      := "-" | "+" | U+2212 (minus sign)              (`unify_signs` maps U+2212 to "-")
    currency  := "\\$" | "$" | "€" | "£" | "¥" | "₹"            (a prefix; dropped)
    body      := mixed | decimal ("/" digits)?                  (`a/b` is a fraction)
    mixed     := digits SPACE digits "/" digits                 (`2 1/2` = 5/2, proper fraction only)
               | digits "\\frac" "{a}{b}" | digits "\\frac" dd    (`2\\frac12` = 5/2)
    decimal   := int ("." digits | "," digits)? | "." digits    (`.4`; the comma rule below)
    int       := [1-9] d{0,2} (SEP ddd)+ | digits               (thousands groups)
    SEP       := "," | "{,}" | "\\," | "\\!" | " " | U+2009 | U+202F
    exponent  := [eE] sign? digits                              (`5e-3`)
               | ("×" | "\\times" | "\\cdot" | "*" | "x" | "X") "10^" (sign? digits | "{" sign? digits "}")
    percent   := "%" | "\\%" | "percent" | "per cent" | "percentage" | "pct"
    magnitude := hundred | thousand | million | billion | trillion | quadrillion | dozen (plural too)

**Commas** (one symmetric rule, applied to golds and predictions alike; `comma_kind`): a comma
between digits with no space after it is ambiguous only between a number and a list, and the
other side of the comparison decides. `1,234` (the exact form `[1-9]d{0,2}(,ddd)+`) is the number
1234 and `2,4` (any other `d+,d+`) the decimal 2.4 when the other side is one number; when the
other side is a list, set, tuple or anything else, every such comma separates items (`2,4` is
the list 2, 4 against `\\{2,4\\}`). `1,234` is never 1.234 (the English convention of GSM8K,
math-verify and latex2sympy). A comma followed by a space always separates items.

Mixed numbers need a proper fraction (`2 1/2`, `3\\frac{3}{4}`); `2 3/2` is not one. A number is
never read inside a LaTeX group or power (`\\frac{1}{4}`, `2^{10}`): that is the fallback's job
(`rewards.extract`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAGNITUDES = {
    "hundred": 10**2, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12,
    "quadrillion": 10**15, "dozen": 12,
}
MINUS_SIGNS = "\u2212\u2796\ufe63\uff0d"  # minus sign, heavy minus, small and fullwidth hyphen-minus
MAX_EXPONENT = 999

SIGN = r"[-+\u2212]"
CURRENCY = r"(?:\\\$|\$|€|£|¥|₹)"
THOUSANDS_SEP = r"(?:,|\{,\}|\\,|\\!|[ \u2009\u202f])"
INT = rf"(?:[1-9]\d{{0,2}}(?:{THOUSANDS_SEP}\d{{3}})+(?!\d)|\d+)"
DECIMAL = rf"(?:{INT}(?:\.\d+|,\d+(?![\d,]))?|\.\d+)"
MIXED = r"(?:\d+(?:[ \t]|\\ |~)\d+\s*/\s*\d+(?!\d|\.\d)|\d+\s*\\[dtc]?frac\s*(?:\{\s*\d+\s*\}\s*\{\s*\d+\s*\}|\d\d))"
FRACTION_TAIL = r"(?:\s*/\s*\d+(?!\d|\.\d))"
EXPONENT = (
    rf"(?:[eE]{SIGN}?\d+(?!\d|\.\d)"
    rf"|\s*(?:×|\\times|\\cdot|\*|[xX])\s*10\s*\^\s*(?:\{{\s*{SIGN}?\d+\s*\}}|{SIGN}?\d+))"
)
PERCENT = r"(?:\s*(?:\\?%|per\s?cent(?:age)?\b|pct\b))"
MAGNITUDE = rf"(?:\s+(?:{'|'.join(MAGNITUDES)})s?\b)"

# A number in prose (the fallback's candidates): not glued to a word or a decimal point before it.
NUMBER_RE = re.compile(
    rf"(?<![\w.]){SIGN}?\s?{CURRENCY}?\s?(?:{MIXED}|{DECIMAL}{FRACTION_TAIL}?){EXPONENT}?{PERCENT}?{MAGNITUDE}*",
    re.IGNORECASE,
)
_MIXED_SPACE_RE = re.compile(r"^(\d+)(?:[ \t]|\\ |~)(\d+)\s*/\s*(\d+)$")
_MIXED_FRAC_RE = re.compile(r"^(\d+)\s*\\[dtc]?frac\s*(?:\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}|(\d)(\d))$")
_SCI_E_RE = re.compile(rf"^(.+?)[eE]({SIGN}?\d+)$")
_SCI_TIMES_RE = re.compile(rf"^(.+?)\s*(?:×|\\times|\\cdot|\*|[xX])\s*10\s*\^\s*(?:\{{\s*({SIGN}?\d+)\s*\}}|({SIGN}?\d+))$")
_PLAIN_RE = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")
_FRACTION_RE = re.compile(r"^(\d+)\s*/\s*(\d+)$|^\\[dtc]?frac\s*(?:\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}|(\d)(\d))$")
_GROUPED_RE = re.compile(rf"^[1-9]\d{{0,2}}(?:{THOUSANDS_SEP}\d{{3}})+(?:\.\d+)?$")
_GROUP_SEP_RE = re.compile(THOUSANDS_SEP)
THOUSANDS_COMMA_RE = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
DECIMAL_COMMA_RE = re.compile(r"-?\d+,\d+")
_SIMPLE_RE = re.compile(r"^-?(?:\d+(?:\.\d+)?|\.\d+)$")
_HAS_DIGIT_RE = re.compile(r"\d")
_CURRENCY_START_RE = re.compile(rf"^{CURRENCY}\s*")
_PERCENT_END_RE = re.compile(rf"{PERCENT}$", re.IGNORECASE)
_MAGNITUDE_END_RE = re.compile(rf"{MAGNITUDE}$", re.IGNORECASE)


@dataclass(frozen=True)
class Number:
    """An exact number: `value`; `decimal` if written with a decimal point or in scientific
    notation (compared with a relative tolerance); `percent` if written with a percent."""

    value: Fraction
    decimal: bool
    percent: bool


def unify_signs(text: str) -> str:
    """U+2212 (and its look-alikes, `MINUS_SIGNS`) -> `-`, `×` -> `\\times`, `·` between digits -> `\\cdot`,
    `÷` -> `\\div`: one spelling per operator before anything reads the text."""
    if text.isascii():
        return text
    for ch in MINUS_SIGNS:
        text = text.replace(ch, "-")
    return text.replace("×", "\\times ").replace("÷", "\\div ").replace("\u22c5", "\\cdot ")


def comma_kind(s: str) -> str | None:
    """How a whole string of digits with one or more commas (no spaces) may be read: "thousands"
    (`1,234`: 1234 or a list), "decimal" (`2,4`: 2.4 or a list), or None (not ambiguous)."""
    s = s.strip()
    if THOUSANDS_COMMA_RE.fullmatch(s):
        return "thousands"
    if DECIMAL_COMMA_RE.fullmatch(s):
        return "decimal"
    return None


def _unsigned_value(body: str, decimal_comma: bool) -> tuple[Fraction, bool] | None:
    """(value, written as a decimal) of an unsigned body: plain, grouped, decimal comma, a/b,
    \\frac{a}{b}, mixed; None for anything else."""
    body = body.strip()
    if _GROUPED_RE.match(body):
        body = _GROUP_SEP_RE.sub("", body)
    elif decimal_comma and re.fullmatch(r"\d+,\d+", body):
        body = body.replace(",", ".")
    if _PLAIN_RE.match(body):
        return Fraction(body), "." in body
    m = _FRACTION_RE.match(body)
    if m:
        num, den = (int(g) for g in (m.group(1, 2) if m.group(1) else m.group(3, 4) if m.group(3) else m.group(5, 6)))
        return (Fraction(num, den), False) if den else None
    m = _MIXED_SPACE_RE.match(body) or _MIXED_FRAC_RE.match(body)
    if m:
        g = [x for x in m.groups() if x is not None]
        whole, num, den = int(g[0]), int(g[1]), int(g[2])
        if 0 < num < den:  # a proper fraction: `2 3/2` is not a mixed number
            return whole + Fraction(num, den), False
    return None


def read_number(s: str, *, decimal_comma: bool = True) -> Number | None:
    """The `Number` written by the whole of `s` (the grammar above: sign, currency, thousands
    groups, decimal point or comma, a/b, `\\frac{a}{b}`, mixed numbers, scientific notation,
    percent, magnitude words), or None when `s` is not exactly one number (or a zero denominator,
    or an exponent past `MAX_EXPONENT`). `decimal_comma=False` reads `2,4` as not a number
    (the other side is a list). Never raises."""
    s = unify_signs(s).strip()
    if _SIMPLE_RE.match(s):  # the common case, without the grammar's machinery
        return Number(Fraction(s), "." in s, False)
    if not s or not _HAS_DIGIT_RE.search(s):
        return None
    scale, decimal = 1, False
    while (m := _MAGNITUDE_END_RE.search(s)) and m.start() > 0:
        scale *= MAGNITUDES[m.group(0).strip().lower().rstrip("s")]
        s = s[: m.start()].rstrip()
    percent = False
    m = _PERCENT_END_RE.search(s)
    if m and m.start() > 0:
        percent, s = True, s[: m.start()].rstrip()
    sign = 1
    if s[:1] and s[0] in "-+":
        sign, s = (-1 if s[0] == "-" else 1), s[1:].lstrip()
    s = _CURRENCY_START_RE.sub("", s)
    if s[:1] and s[0] in "-+" and sign == 1:  # `$-5`
        sign, s = (-1 if s[0] == "-" else 1), s[1:].lstrip()
    exp = 0
    m = _SCI_TIMES_RE.match(s) or _SCI_E_RE.match(s)
    if m:
        k = next(g for g in m.groups()[1:] if g is not None)
        exp, s, decimal = int(k.replace("+", "")), m.group(1), True
        if abs(exp) > MAX_EXPONENT:
            return None
    got = _unsigned_value(s, decimal_comma)
    if got is None:
        return None
    value, dec = got
    if scale != 1 or exp:
        value = value * scale * (Fraction(10) ** exp)
    return Number(-value if sign < 0 else value, decimal or dec, percent)


def format_fraction(v: Fraction) -> str:
    return f"\\frac{{{v.numerator}}}{{{v.denominator}}}" if v >= 0 else f"-\\frac{{{-v.numerator}}}{{{v.denominator}}}"
