"""Accuracy of the project's scorer vs plain math-verify on the labelled set; writes docs/rewards.md's table.

Run:  python tests/rewards/reward_report_accuracy.py            # print the markdown table
      python tests/rewards/reward_report_accuracy.py --write    # regenerate the table inside docs/rewards.md

"Plain math-verify" is what people plug into TRL: `verify(parse(gold), parse(completion))` on the raw
gold and the whole completion, default settings, in process.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path

CASES_PATH = Path(__file__).with_name("labelled_cases.jsonl")
DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "rewards.md"
BEGIN, END = "<!-- BEGIN accuracy table (generated) -->", "<!-- END accuracy table (generated) -->"


def load_cases() -> list[dict]:
    return [json.loads(line) for line in CASES_PATH.read_text().splitlines() if line.strip()]


def plain_math_verify(completion: str, gold: str) -> float:
    from math_verify import parse, verify

    try:
        return float(verify(parse(gold), parse(completion)))
    except BaseException as e:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
        if isinstance(e, KeyboardInterrupt):
            raise
        return 0.0


def evaluate(cases: list[dict]) -> tuple[list[float], list[float]]:
    from rewards.math import score_batch

    ours = score_batch([c["completion"] for c in cases], [c["gold"] for c in cases])
    plain = [plain_math_verify(c["completion"], c["gold"]) for c in cases]
    return ours, plain


def markdown(cases: list[dict], ours: list[float], plain: list[float]) -> str:
    n = len(cases)
    acc_o = sum(o == c["expected"] for c, o in zip(cases, ours)) / n
    acc_p = sum(p == c["expected"] for c, p in zip(cases, plain)) / n
    lines = [
        f"Labelled set: {n} cases (`tests/rewards/labelled_cases.jsonl`), "
        f"{sum(c['expected'] == 1.0 for c in cases)} equivalent / {sum(c['expected'] == 0.0 for c in cases)} not.",
        "",
        "| scorer | accuracy | false negatives | false positives |",
        "|---|---|---|---|",
    ]
    for name, res, acc in (("rewards.math.score_batch", ours, acc_o), ("plain math-verify", plain, acc_p)):
        fn = sum(r == 0.0 and c["expected"] == 1.0 for c, r in zip(cases, res))
        fp = sum(r == 1.0 and c["expected"] == 0.0 for c, r in zip(cases, res))
        lines.append(f"| {name} | {acc:.1%} ({round(acc * n)}/{n}) | {fn} | {fp} |")
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for c, o, p in zip(cases, ours, plain):
        per_cat[c["category"]][0] += 1
        per_cat[c["category"]][1] += o == c["expected"]
        per_cat[c["category"]][2] += p == c["expected"]
    lines += ["", "| category | cases | ours correct | plain correct |", "|---|---|---|---|"]
    lines += [f"| {k} | {v[0]} | {v[1]} | {v[2]} |" for k, v in sorted(per_cat.items())]
    lines += ["", "Every case where the two scorers differ, or where ours is wrong:", "",
              "| id | category | completion | gold | expected | ours | plain |", "|---|---|---|---|---|---|---|"]
    for c, o, p in zip(cases, ours, plain):
        if o != p or o != c["expected"]:
            comp = c["completion"].replace("|", "\\|").replace("\n", " ")
            gold = c["gold"].replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {c['id']} | {c['category']} | `{comp[:70]}` | `{gold[:50]}` | {c['expected']:.0f} | {o:.0f} | {p:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"replace the generated table in {DOC_PATH}")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # math-verify warns per unparseable string
    cases = load_cases()
    ours, plain = evaluate(cases)
    table = markdown(cases, ours, plain)
    if args.write:
        text = DOC_PATH.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"report_accuracy: error: {DOC_PATH} lacks the {BEGIN} / {END} markers. Fix: add them")
        head, rest = text.split(BEGIN, 1)
        DOC_PATH.write_text(head + BEGIN + "\n" + table + END + rest.split(END, 1)[1])
        print(f"wrote the table into {DOC_PATH}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
