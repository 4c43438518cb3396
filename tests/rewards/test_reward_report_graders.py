"""`reward_report_graders.py` reads a grader suite's parametrize tables without importing them."""

from __future__ import annotations

from reward_report_graders import LABEL_NOT_TRUTH, suite_cases

SOURCE = '''
import pytest

@pytest.mark.parametrize("gold,pred,expected", [("1", "$1$", 1), ("2", "3", 0)])
def test_a(gold, pred, expected):
    assert compare_strings(gold, pred) == expected

@pytest.mark.parametrize("gold,pred,expected,precision", [("1/3", "0.33", 1, 2), ("1/2", "0.5", 1, 6)])
def test_b(gold, pred, expected, precision):
    pass

@pytest.mark.parametrize("pred,expected,config", [("x", ["x"], None)])
def test_parse_only(pred, expected, config):
    pass

@pytest.mark.parametrize("gold, pred, result", [("$9$", "Answer $ \\n 9 \\n $", 0)])
def test_c(gold, pred, result):
    raise SystemExit("never run: the file is parsed, not imported")
'''


def test_suite_cases_reads_tables_skips_settings_and_marks_wrong_labels():
    cases, skipped = suite_cases({"test_x.py": SOURCE})
    # test_a: 2 rows; test_b: the precision=2 row skipped, the precision=6 row kept; test_parse_only has
    # no gold column; test_c's label (0) is one of LABEL_NOT_TRUTH (truth 1).
    assert [(c["gold"], c["pred"], c["expected"]) for c in cases] == [
        ("1", "$1$", 1.0), ("2", "3", 0.0), ("1/2", "0.5", 1.0), ("$9$", "Answer $ \n 9 \n $", 0.0)]
    assert skipped == {"precision=2": 1}
    assert [c["truth"] for c in cases] == [1.0, 0.0, 1.0, 1.0]
    assert ("$9$", "Answer $ \n 9 \n $") in LABEL_NOT_TRUTH  # real newlines, as in math-verify's test_all.py
