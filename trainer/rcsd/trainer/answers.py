"""Final-answer extraction and checking: GRPO's verifiable reward and `rcsd eval`'s accuracy.

Extraction, in order: the last `\\boxed{...}` (nested braces allowed); then, unless the question is
numeric, a choice letter ("the answer is (B)", "Answer: B", "**B**", "B)"); then the last number in the
text. A numeric answer is right within 5 % relative tolerance (SciBench's convention) after LaTeX and
units are stripped; fractions (`\\frac{a}{b}`, `a/b`), scientific notation (`1.2e-3`,
`1.2 \\times 10^{-3}`, `1.2×10^-3`) and thousands separators are read. A multiple-choice answer is right
when its letter matches; an answer that is a choice's text (or a number only one choice holds) counts as
that choice's letter.
"""

from __future__ import annotations

import math
import re

from rcsd.trainer.data.questions import LETTERS, Question

RELATIVE_TOLERANCE = 0.05

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_POWER = r"\s*\*\s*10\s*\^\s*\{?\s*(?P<exp>[-+]?\d+)\s*\}?"  # after normalising \times, × and x to *
_NUMERIC = re.compile(
    rf"(?P<frac>[-+]?)\\frac\s*\{{\s*(?P<num>{_NUMBER})\s*\}}\s*\{{\s*(?P<den>{_NUMBER})\s*\}}"
    rf"|(?<![\d.])10\s*\^\s*\{{?\s*(?P<pow10>[-+]?\d+)\s*\}}?"
    rf"|(?<![\^{{\w.])(?P<mantissa>{_NUMBER})(?:{_POWER})?(?:\s*/\s*(?P<divisor>{_NUMBER}))?"
)
_LETTER_PATTERNS = [  # most explicit first; within a pattern the last match wins
    re.compile(r"(?i:answer)\s*(?:(?i:is)|:)?\s*[:\s]*\**\s*\(?([A-Z])\)?(?![A-Za-z])"),
    re.compile(r"\*\*\s*\(?([A-Z])\)?\s*\*\*"),
    re.compile(r"(?:^|\s)\(?([A-Z])\)(?=[\s.,;:]|$)"),
]
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_UNIT_POWER = re.compile(r"^\s*\$?\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?")


def extract_answer(text: str, answer_type: str | None = None) -> str | None:
    """The final answer in `text` as a string, or None. `answer_type="numeric"` skips the letter step."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    if answer_type != "numeric":
        for pattern in _LETTER_PATTERNS:
            letters = pattern.findall(text)
            if letters:
                return letters[-1]
    numbers = list(_NUMERIC.finditer(_normalise(text)))
    return numbers[-1].group(0).strip() if numbers else None


def is_correct(prediction: str | None, question: Question) -> bool:
    """Whether an extracted answer is the question's answer (letter match, or numeric within 5 %)."""
    if prediction is None:
        return False
    if question.answer_type == "mcq":
        return _choice_letter(prediction, question) == question.answer
    value = parse_number(prediction)
    if value is None:
        return False
    expected = parse_number(question.answer)
    if expected is None:
        raise ValueError(f"question {question.id}: answer {question.answer!r} is not a number")
    candidates = [value]
    unit_power = _UNIT_POWER.match(question.unit or "")
    if unit_power:  # the unit "10^{11} J": an answer of 3e11 J means 3 in the unit asked
        candidates.append(value / 10 ** int(unit_power.group(1)))
    return any(_close(candidate, expected) for candidate in candidates)


def reward(text: str, question: Question) -> float:
    """1.0 when the final answer in `text` is right, else 0.0."""
    return 1.0 if is_correct(extract_answer(text, question.answer_type), question) else 0.0


def parse_number(text: str) -> float | None:
    """The first number in `text` (after the last `=` or `\\approx`), LaTeX and units stripped; None if none."""
    normalised = _normalise(text)
    normalised = re.split(r"=|\\approx|≈", normalised)[-1]
    match = _NUMERIC.search(normalised)
    if match is None:
        return None
    try:
        if match.group("num") is not None:
            sign = -1.0 if match.group("frac") == "-" else 1.0
            return sign * float(match.group("num")) / float(match.group("den"))
        if match.group("pow10") is not None:
            return 10.0 ** int(match.group("pow10"))
        value = float(match.group("mantissa"))
        if match.group("exp") is not None:
            value *= 10.0 ** int(match.group("exp"))
        if match.group("divisor") is not None:
            value /= float(match.group("divisor"))
    except (ZeroDivisionError, OverflowError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _close(value: float, expected: float) -> bool:
    if expected == 0:
        return abs(value) <= 1e-9
    return abs(value - expected) <= RELATIVE_TOLERANCE * abs(expected)


def _last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` / `\\fbox{...}`, braces balanced; None if there is none."""
    for opening in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for i in range(opening.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[opening.end() : i].strip()
    return None


def _normalise(text: str) -> str:
    """LaTeX spacing, wrappers and units out; times signs as `*`; thousands commas and unicode minus out."""
    text = text.replace("\u2212", "-").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\\(?:mathrm|text|textrm|mbox|operatorname)\s*\{[^{}]*\}", " ", text)  # units
    text = re.sub(r"\\(?:left|right|displaystyle|[,;:! ])", " ", text)
    text = text.replace("$", " ").replace("~", " ")
    text = re.sub(r"\s*(?:\\times|\\cdot|×|·|(?<=\d)\s*[xX](?=\s*10\s*\^))\s*", "*", text)
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)


def _choice_letter(prediction: str, question: Question) -> str | None:
    """A letter from a boxed or extracted answer: "B", "(B)", "B) text", the choice's text, or a number."""
    assert question.choices is not None
    letters = LETTERS[: len(question.choices)]
    match = re.fullmatch(r"\s*\(?([A-Z])\)?(?:[.:)\s].*)?", prediction, flags=re.DOTALL)
    if match and match.group(1) in letters:
        return match.group(1)
    wanted = _plain(prediction)
    for letter, choice in zip(letters, question.choices, strict=True):
        if _plain(choice) == wanted:
            return letter
    value = parse_number(prediction)
    if value is not None:
        holding = [
            letter
            for letter, choice in zip(letters, question.choices, strict=True)
            if (number := parse_number(choice)) is not None and _close(value, number)
        ]
        if len(holding) == 1:
            return holding[0]
    return None


def _plain(text: str) -> str:
    return re.sub(r"[\s.$]+", " ", text).strip().lower()
