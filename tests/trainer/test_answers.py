"""The answer checker on hand-made cases: boxed (nested braces), fractions, scientific notation, units,
letters in prose, no answer."""

from __future__ import annotations

import pytest

from rcsd.trainer.answers import extract_answer, is_correct, parse_number, reward
from rcsd.trainer.data.questions import Question


def numeric(answer: str, unit: str = "") -> Question:
    return Question(
        id="n", source="t", subject="physics", answer_type="numeric", question="?", answer=answer, unit=unit
    )


MCQ = Question(
    id="m", source="t", subject="chemistry", answer_type="mcq", question="Which?",
    choices=["Oxygen", "Hydrogen", "4.2 m", "Nitrogen"], answer="B",
)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the result is \\boxed{\\frac{3}{4}} indeed", "\\frac{3}{4}"),
        ("first \\boxed{1} then \\boxed{x^{2}_{\\text{max}} = 2.5}", "x^{2}_{\\text{max}} = 2.5"),
        ("\\boxed{{1.2} \\times 10^{-3}}", "{1.2} \\times 10^{-3}"),
        ("\\boxed {B}", "B"),
        ("Therefore, the answer is (C).", "C"),
        ("Answer: **D**", "D"),
        ("I think it is A at first, but the final answer is B because...", "B"),
        ("Looking at the options, **C** is right.", "C"),
        ("Hmm.\nB) Hydrogen\n", "B"),
        ("The speed is 12 m/s after 3 s, so 36 m.", "36"),
        ("E = 1.5 \\times 10^{4} J", "1.5*10^{4}"),
        ("no numbers or letters here", None),
        ("", None),
    ],
)
def test_extract(text, expected):
    assert extract_answer(text) == expected


def test_numeric_questions_skip_letters():
    assert extract_answer("The answer is A = 5.0 m", "numeric") == "5.0"
    assert extract_answer("The answer is A = 5.0 m") == "A"


@pytest.mark.parametrize(
    ("prediction", "value"),
    [
        ("\\frac{3}{4}", 0.75),
        ("-\\dfrac{1}{8}", -0.125),
        ("3/4", 0.75),
        ("1.2e-3", 1.2e-3),
        ("1.2E+3", 1.2e3),
        ("1.2 \\times 10^{-3}", 1.2e-3),
        ("1.2×10^-3", 1.2e-3),
        ("1.2 x 10^-3 m", 1.2e-3),
        ("2.5 \\cdot 10^{6}", 2.5e6),
        ("10^{-3}", 1e-3),
        ("1,234,567.5", 1234567.5),
        ("$-0.16 \\mathrm{~mm}$", -0.16),
        ("v = 12.5 \\mathrm{~m} / \\mathrm{s}", 12.5),
        ("\u22124.0 kJ mol^{-1}", -4.0),
        ("x \\approx 3.14", 3.14),
        ("\\text{about } 7", 7.0),
        ("seven", None),
        ("1/0", None),
    ],
)
def test_parse_number(prediction, value):
    parsed = parse_number(prediction)
    assert parsed == (None if value is None else pytest.approx(value))


@pytest.mark.parametrize(
    ("text", "answer", "unit", "right"),
    [
        ("The answer is \\boxed{19.6 \\mathrm{~m}}", "19.6", "$\\mathrm{~m}$", True),
        ("\\boxed{20}", "19.6", "", True),  # 2 % off
        ("\\boxed{21}", "19.6", "", False),  # 7 % off
        ("so about 0.00120 kg", "1.2e-3", "", True),
        ("\\boxed{\\frac{1}{3}}", "0.3333", "", True),
        ("\\boxed{3.2 \\times 10^{11}}", "3.2", "$10^{11} \\mathrm{~J}$", True),  # the unit's power
        ("\\boxed{3.2}", "3.2", "$10^{11} \\mathrm{~J}$", True),
        ("\\boxed{0}", "0", "", True),
        ("I cannot solve this.", "19.6", "", False),
    ],
)
def test_numeric_correctness(text, answer, unit, right):
    assert reward(text, numeric(answer, unit)) == (1.0 if right else 0.0)


@pytest.mark.parametrize(
    ("text", "right"),
    [
        ("The answer is (B).", True),
        ("Answer: B", True),
        ("**B**", True),
        ("\\boxed{B}", True),
        ("\\boxed{(B) Hydrogen}", True),
        ("\\boxed{Hydrogen}", True),  # the choice's text
        ("\\boxed{A}", False),
        ("The answer is (C).", False),
        ("so the answer is 4.2", False),  # C holds 4.2: a number one choice holds is that choice
        ("nothing", False),
    ],
)
def test_mcq_correctness(text, right):
    assert is_correct(extract_answer(text, "mcq"), MCQ) is right


def test_a_number_names_the_one_choice_holding_it():
    assert is_correct("4.2", MCQ.model_copy(update={"answer": "C"}))
    assert not is_correct(None, MCQ)
