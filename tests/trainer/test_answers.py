"""The answer reader on hand-made answers: think blocks (closed, unclosed, reopened), the last explicit
answer winning whatever its form, letters limited to the question's choices, LaTeX through math-verify
(boxed with nested braces, \\dfrac, scientific notation, units), SciBench's 5 % tolerance, free-form
references, and math-verify called from a worker thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from rcsd.trainer.answers import (
    Reading,
    extract_answer,
    final_text,
    is_correct,
    parse_number,
    read_answer,
    reward,
)
from rcsd.trainer.data.questions import Question


def numeric(answer: str, unit: str = "") -> Question:
    return Question(
        id="n", source="t", subject="physics", answer_type="numeric", question="?", answer=answer, unit=unit
    )


MCQ = Question(
    id="m", source="t", subject="chemistry", answer_type="mcq", question="Which?",
    choices=["Oxygen", "Hydrogen", "4.2 m", "Nitrogen"], answer="B",
)  # fmt: skip
TEN = MCQ.model_copy(update={"choices": [f"choice {i}" for i in range(10)], "answer": "C"})  # A to J
FREE_FORM = Question.model_construct(  # the rubric sets' kind: not a type the validator knows yet
    id="f", source="t", subject="biology", answer_type="free_form", question="Why?",
    answer="Because the mitochondria make ATP.",
)  # fmt: skip


# --- think blocks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "final"),
    [
        ("no thinking, just \\boxed{B}", "no thinking, just \\boxed{B}"),
        ("<think>maybe A</think>\nThe answer is B.", "\nThe answer is B."),
        ("prompt opened it: maybe A</think>B", "B"),  # templates that put <think> in the prompt
        ("<think>a</think><think>b</think> final", " final"),
        ("<think>still thinking, \\boxed{A}", None),
        ("<think>a</think> draft <think>more thinking", None),  # reopened, never closed
        ("<think>a</think>", ""),
    ],
)
def test_final_text(text, final):
    assert final_text(text) == final


def test_a_think_block_is_not_read():
    assert read_answer("<think>The answer is (A).</think>\nThe answer is (B).", MCQ).answer == "B"
    assert read_answer("<think>\\boxed{A}</think>\n**B**", MCQ).answer == "B"
    assert read_answer("<think>x = \\boxed{9.0}</think>\nSo E = 19.6 J.", numeric("19.6")).correct
    # nothing after the think block: no answer, though the block holds one
    assert read_answer("<think>The answer is (B).</think>\n", MCQ) == Reading(None, None, False, False)


@pytest.mark.parametrize("question", [MCQ, numeric("19.6")])
def test_an_unclosed_think_block_is_truncated(question):
    reading = read_answer("<think>The answer is (B), \\boxed{19.6}... wait", question)
    assert reading == Reading(answer=None, form=None, truncated=True, correct=False)
    assert reward("<think>The answer is (B), \\boxed{19.6}", question) == 0.0
    assert extract_answer("<think>\\boxed{B}", question) is None


# --- multiple choice -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "letter", "form"),
    [
        # the failures
        ("Option (A) looks plausible, but it fails at high T. The correct choice is C.", "C", "stated"),
        ("Answer: I think it is (C)", "C", "stated"),
        ("Answer: I think it is C", "C", "stated"),
        ("\\boxed{\\text{B}}", "B", "boxed"),
        ("\\boxed{(C)}", "C", "boxed"),
        # the last explicit answer wins, whatever its form
        ("\\boxed{A} at first; re-checking the units, Answer: C", "C", "stated"),
        ("Answer: A\n\nWait, the sign is wrong. \\boxed{D}", "D", "boxed"),
        ("The answer is (B). Note that (A) and (D) ignore the catalyst.", "B", "stated"),
        ("I think it is A at first, but the final answer is B because...", "B", "stated"),
        ("The answer is (B).\n\n**Final Answer:** (D)", "D", "stated"),
        # forms of the letter
        ("\\boxed{B}", "B", "boxed"),
        ("\\boxed {\\textbf{D}}", "D", "boxed"),
        ("$\\boxed{\\text{(A)}}$", "A", "boxed"),
        ("\\boxed{(B) Hydrogen}", "B", "boxed"),
        ("Answer: $D$", "D", "stated"),
        ("**Answer:** C", "C", "stated"),
        ("**Answer**: (A) Oxygen", "A", "stated"),
        ("The answer is: B) Hydrogen", "B", "stated"),
        ("Therefore, the best option is (C).", "C", "stated"),
        ("Answer:\n\nD", "D", "stated"),
        ("So the answer would be **B**.", "B", "stated"),
        ("**Answer:** Hydrogen", "B", "stated"),  # the choice's text
        ("so the answer is 4.2", "C", "stated"),  # a number only choice C holds
        # no statement: the last marked letter
        ("Looking at the options, **C** is right.", "C", "marked"),
        ("Hmm.\nB) Hydrogen\n", "B", "marked"),
        ("(A) is out, (D) is out, which leaves (B)", "B", "marked"),
        ("B", "B", "marked"),
        ("Option D fits the data.", "D", "marked"),
    ],
)
def test_mcq_reading(text, letter, form):
    reading = read_answer(text, MCQ)
    assert (reading.answer, reading.form, reading.truncated) == (letter, form, False)
    assert reading.correct is (letter == "B")


@pytest.mark.parametrize(
    "text",
    [
        "Answer: E",  # four choices: no E
        "The answer is (F).",
        "\\boxed{G}",
        "I am not sure. It could be anything.",  # "I" is no choice
        "The answer is not obvious from the data",
        "",
        "nothing",
    ],
)
def test_mcq_letters_come_only_from_the_choices(text):
    assert read_answer(text, MCQ).answer is None
    assert reward(text, MCQ) == 0.0


def test_ten_choices_still_prefer_a_marked_letter_over_the_pronoun_i():
    assert extract_answer("Answer: I think it is (C)", TEN) == "C"
    assert extract_answer("Answer: I think it is C", TEN) == "C"
    assert extract_answer("Answer: I", TEN) == "I"  # where I is a choice and alone, it is the answer
    assert extract_answer("The answer is A, since the others fail.", TEN) == "A"


def test_a_statement_without_an_answer_is_passed_over():
    assert extract_answer("\\boxed{B}. I hope this answer is helpful.", MCQ) == "B"
    assert extract_answer("\\boxed{19.6}. This answer is consistent with g.", numeric("19.6")) == "19.6"


# --- numeric answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer", "form"),
    [
        ("so the result is \\boxed{\\frac{3}{4}} indeed", "\\frac{3}{4}", "boxed"),
        ("first \\boxed{1} then \\boxed{x^{2}_{\\text{max}} = 2.5}", "x^{2}_{\\text{max}} = 2.5", "boxed"),
        ("\\boxed{{1.2} \\times 10^{-3}}", "{1.2} \\times 10^{-3}", "boxed"),
        ("The speed is 12 m/s after 3 s, so 36 m.", "36", "number"),
        ("E = 1.5 \\times 10^{4} J", "1.5 \\times 10^{4}", "number"),
        ("The answer is A = 5.0 m", "A = 5.0 m", "stated"),  # a numeric question reads no letters
        ("\\boxed{0.75} but Answer: 0.7", "0.7", "stated"),  # the last explicit answer wins
        ("Answer: 0.7, or rather \\boxed{\\dfrac{3}{4}}", "\\dfrac{3}{4}", "boxed"),
        ("Final answer: $1.2 \\times 10^{-3}$ kg", "$1.2 \\times 10^{-3}$ kg", "stated"),
        ("The mass of H2O is 18 g.", "18", "number"),  # the 2 in H2O is no number
        ("no numbers here", None, None),
    ],
)
def test_numeric_reading(text, answer, form):
    reading = read_answer(text, numeric("0.75"))
    assert (reading.answer, reading.form) == (answer, form)


@pytest.mark.parametrize(
    ("prediction", "value"),
    [
        ("\\frac{3}{4}", 0.75),
        ("-\\dfrac{1}{8}", -0.125),
        ("\\dfrac{\\sqrt{3}}{2}", 0.8660254),  # math-verify's sympy, not a regex
        ("\\frac{\\pi}{4}", 0.7853982),
        ("3/4", 0.75),
        ("1.2e-3", 1.2e-3),
        ("1.2E+3", 1.2e3),
        ("1.2 \\times 10^{-3}", 1.2e-3),
        ("{1.2} \\times 10^{-3}", 1.2e-3),
        ("1.2×10^-3", 1.2e-3),
        ("1.2 x 10^-3 m", 1.2e-3),
        ("3 \\times 10^8 m/s", 3e8),
        ("2.5 \\cdot 10^{6}", 2.5e6),
        ("10^{-3}", 1e-3),
        ("6.02 \\times 10^{23} \\text{ mol}^{-1}", 6.02e23),
        ("1,234,567.5", 1234567.5),
        ("12,000 J", 12000.0),
        ("$-0.16 \\mathrm{~mm}$", -0.16),
        ("v = 12.5 \\mathrm{~m} / \\mathrm{s}", 12.5),
        ("9.8 m/s^2", 9.8),
        ("\u22124.0 kJ mol^{-1}", -4.0),
        ("x \\approx 3.14", 3.14),
        ("approximately 36 m", 36.0),  # not 36·e·... (Euler's e in "approximately")
        ("\\text{about } 7", 7.0),
        ("45^\\circ", 45.0),
        ("+11", 11.0),
        ("seven", None),
        ("1/0", None),
        ("", None),
    ],
)
def test_parse_number(prediction, value):
    parsed = parse_number(prediction)
    assert parsed == (None if value is None else pytest.approx(value, rel=1e-6))


@pytest.mark.parametrize(
    ("text", "answer", "unit", "right"),
    [
        ("The answer is \\boxed{19.6 \\mathrm{~m}}", "19.6", "$\\mathrm{~m}$", True),
        ("\\boxed{20}", "19.6", "", True),  # 2 % off
        ("\\boxed{20.5}", "19.6", "", True),  # 4.6 % off
        ("\\boxed{21}", "19.6", "", False),  # 7 % off
        ("\\boxed{-19.6}", "19.6", "", False),
        ("so about 0.00120 kg", "1.2e-3", "", True),
        ("\\boxed{1.2e-3}", "0.0012", "", True),
        ("\\boxed{\\frac{1}{3}}", "0.3333", "", True),
        ("\\boxed{\\dfrac{1}{3}}", "0.3333", "", True),
        ("\\boxed{3.2 \\times 10^{11}}", "3.2", "$10^{11} \\mathrm{~J}$", True),  # the unit's power
        ("\\boxed{3.2}", "3.2", "$10^{11} \\mathrm{~J}$", True),
        ("\\boxed{3.2}", "3.2", "$10^3$", True),
        ("\\boxed{0}", "0", "", True),
        ("\\boxed{1,310 \\text{ K}}", "1310", "K", True),
        ("Answer: -501 kJ/mol", "-501", "", True),
        ("\\boxed{\\sqrt{2}}", "1.414", "", True),
        ("I cannot solve this.", "19.6", "", False),
        ("<think>\\boxed{19.6}</think>\nI give up.", "19.6", "", False),
    ],
)
def test_numeric_correctness(text, answer, unit, right):
    assert reward(text, numeric(answer, unit)) == (1.0 if right else 0.0)


def test_mcq_correctness_from_an_extracted_answer():
    assert is_correct("B", MCQ)
    assert is_correct("(B) Hydrogen", MCQ)
    assert is_correct("Hydrogen", MCQ)
    assert not is_correct("A", MCQ)
    assert not is_correct(None, MCQ)
    assert is_correct("4.2", MCQ.model_copy(update={"answer": "C"}))  # the one choice holding 4.2


# --- free-form references --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question",
    [FREE_FORM, numeric("about 3 moles of ATP"), numeric("The rate doubles")],
)
def test_a_free_form_reference_has_no_verifiable_answer(question):
    reading = read_answer("The answer is: the rate doubles, about 3.", question)
    assert reading.correct is None and not reading.verifiable
    assert reward("The answer is: the rate doubles, about 3.", question) == 0.0
    assert not is_correct("3", question)


def test_a_free_form_answer_is_still_read():
    reading = read_answer("<think>hmm</think>\nAnswer: ATP synthesis in the mitochondria.", FREE_FORM)
    assert reading.answer == "ATP synthesis in the mitochondria"
    assert read_answer("<think>hmm", FREE_FORM) == Reading(None, None, truncated=True, correct=None)


# --- threads ---------------------------------------------------------------------------------------


def test_math_verify_runs_off_the_main_thread():
    """math-verify's SIGALRM timeout raises outside the main thread; eval may score in threads."""
    texts = ["\\boxed{\\dfrac{3}{4}}", "\\boxed{0.75}", "Answer: 7.5 \\times 10^{-1}", "\\boxed{1}"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        rewards = list(pool.map(lambda text: reward(text, numeric("0.75")), texts))
    assert rewards == [1.0, 1.0, 1.0, 0.0]
