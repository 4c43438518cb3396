"""Accuracy of the project's scorer (lenient and strict extraction) vs plain math-verify on the
labelled sets; writes the tables of docs/rewards.md.

Run:  python tests/rewards/reward_report_accuracy.py            # print the markdown
      python tests/rewards/reward_report_accuracy.py --write    # regenerate the tables inside docs/rewards.md

Labelled sets (one JSON object per line: id, category, completion, gold, expected, note?):
  labelled_cases.jsonl      244 cases written with the first reward (boxed answers, normalization);
  labelled_cases_v2.jsonl   the cases of issue 11: marker-less answers, list boxes, constants,
                            magnitude words, tolerance, relations, intervals, matrices, percents,
                            thousands/decimal commas, multiple choice, worked-solution golds, hedging;
  labelled_cases_v3.jsonl   issue 11b: the failure classes found by scoring public grader suites
                            (math-verify's tests), written in our own words, each with traps;
  labelled_cases_v4.jsonl   issue 17: how numbers are written (mixed numbers, U+2212, scientific
                            notation, currency, decimal commas) and the issue's classes (multi-box
                            golds, a gold's right-hand side, "or" alternatives, stray backslash,
                            `\boxed` whitespace, letters with option text), with traps; the first
                            rows are counter-examples found by the round-trip property
                            (tests/rewards/test_reward_numbers.py).
`expected` is the truth (is the completion's final answer equivalent to the gold?), the same for
both modes: strict mode is expected to miss the marker-less ones.

"Plain math-verify" is what people plug into TRL: `verify(parse(gold), parse(completion))` on the raw
gold and the whole completion, default settings, in process.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
CORPORA = {"v1": HERE / "labelled_cases.jsonl", "v2": HERE / "labelled_cases_v2.jsonl",
           "v3": HERE / "labelled_cases_v3.jsonl", "v4": HERE / "labelled_cases_v4.jsonl"}
CASES_PATH = CORPORA["v1"]
DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "rewards.md"
BEGIN, END = "<!-- BEGIN accuracy table (generated) -->", "<!-- END accuracy table (generated) -->"
SCORERS = ("lenient", "strict", "plain")


def load_cases(path: Path = CASES_PATH) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plain_math_verify(completion: str, gold: str) -> float:
    from math_verify import parse, verify

    try:
        return float(verify(parse(gold), parse(completion)))
    except BaseException as e:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
        if isinstance(e, KeyboardInterrupt):
            raise
        return 0.0


def evaluate(cases: list[dict], plain: bool = True) -> dict[str, list[float]]:
    """Scores per scorer: lenient and strict through `score_batch` (the pool path of training),
    plain math-verify in process (skipped with plain=False)."""
    from rewards.math import score_batch

    comps, golds = [c["completion"] for c in cases], [c["gold"] for c in cases]
    out = {m: score_batch(comps, golds, extraction=m, timeout=10.0) for m in ("lenient", "strict")}
    if plain:
        out["plain"] = [plain_math_verify(c, g) for c, g in zip(comps, golds)]
    return out


def counts(cases: list[dict], res: list[float]) -> dict[str, int]:
    return {
        "correct": sum(r == c["expected"] for c, r in zip(cases, res)),
        "fn": sum(r == 0.0 and c["expected"] == 1.0 for c, r in zip(cases, res)),
        "fp": sum(r == 1.0 and c["expected"] == 0.0 for c, r in zip(cases, res)),
    }


def _cell(s: str, n: int) -> str:
    return "`" + s.replace("|", "\\|").replace("\n", "\\n").replace("`", "'")[:n] + "`"


def markdown(name: str, path: Path, cases: list[dict], scores: dict[str, list[float]]) -> str:
    n = len(cases)
    lines = [
        f"**{name}**: {n} cases (`tests/rewards/{path.name}`), {sum(c['expected'] == 1.0 for c in cases)} equivalent / "
        f"{sum(c['expected'] == 0.0 for c in cases)} not.",
        "",
        "| scorer | accuracy | false negatives | false positives |",
        "|---|---|---|---|",
    ]
    label = {"lenient": "ours, `extraction=\"lenient\"` (default)", "strict": "ours, `extraction=\"strict\"`",
             "plain": "plain math-verify"}
    for m in SCORERS:
        k = counts(cases, scores[m])
        lines.append(f"| {label[m]} | {k['correct'] / n:.1%} ({k['correct']}/{n}) | {k['fn']} | {k['fp']} |")
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for i, c in enumerate(cases):
        row = per_cat[c["category"]]
        row[0] += 1
        for j, m in enumerate(SCORERS, start=1):
            row[j] += scores[m][i] == c["expected"]
    lines += ["", "| category | cases | lenient correct | strict correct | plain correct |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v[0]} | {v[1]} | {v[2]} | {v[3]} |" for k, v in sorted(per_cat.items())]
    lines += ["", "Every case where lenient and plain math-verify differ, or where lenient is wrong "
              "(strict differs from lenient exactly on the marker-less answers, see below):", "",
              "| id | category | completion | gold | expected | lenient | strict | plain |",
              "|---|---|---|---|---|---|---|---|"]
    for i, c in enumerate(cases):
        le, st, pl = scores["lenient"][i], scores["strict"][i], scores["plain"][i]
        if le != pl or le != c["expected"]:
            lines.append(f"| {c['id']} | {c['category']} | {_cell(c['completion'][-70:], 70)} | {_cell(c['gold'][-50:], 50)} | "
                         f"{c['expected']:.0f} | {le:.0f} | {st:.0f} | {pl:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"replace the generated tables in {DOC_PATH}")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # math-verify warns per unparseable string
    parts = []
    for name, path in CORPORA.items():
        cases = load_cases(path)
        parts.append(markdown(name, path, cases, evaluate(cases)))
    table = "\n".join(parts)
    if args.write:
        text = DOC_PATH.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"report_accuracy: error: {DOC_PATH} lacks the {BEGIN} / {END} markers. Fix: add them")
        head, rest = text.split(BEGIN, 1)
        DOC_PATH.write_text(head + BEGIN + "\n" + table + END + rest.split(END, 1)[1])
        print(f"wrote the tables into {DOC_PATH}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
