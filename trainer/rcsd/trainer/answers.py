"""Reading a model's final answer and checking it: GRPO's verifiable reward and `rcsd eval`'s accuracy.

Reading, in order:
1. Only the text after the last `</think>` counts. A `<think>` with no `</think>` after it means the
   model never gave a final answer: the reading is `truncated`, with no answer.
2. The last explicit answer wins, whatever its form: a `\\boxed{...}` / `\\fbox{...}` (nested braces),
   or a statement ("the answer is ...", "Answer: ...", "the correct choice is ..."). A statement that
   holds no answer ("this answer is consistent with ...") is passed over.
3. Without one, the last marked choice letter ("(B)", "**B**", a line "B) ...") for multiple choice,
   or the last number for a numeric question.
A letter counts only when it names one of the question's choices, and a marked "(C)" beats a bare
letter ("Answer: I think it is (C)" is C). A choice's text, or a number only one choice holds, names
that choice.

Checking: a numeric answer is right within 5 % relative tolerance of the reference (SciBench's
convention), also when written in the power of ten of the question's unit ("3.2e11" for "10^{11} J").
HF's math-verify turns LaTeX into a value (`\\frac`, `\\dfrac`, `\\sqrt`, `\\pi`, `\\times 10^{-3}`, units
in `\\mathrm{}` / `\\text{}`); this module adds the reading above, e-notation, thousands separators,
`=` and `\\approx` chains, units written as bare letters, and the tolerance. A question whose reference
is neither a number nor a choice letter (free-form) has no verifiable answer: `Reading.correct` is None
and its reward 0.0; a rubric judge grades those.

math-verify's own timeouts are SIGALRM-based and raise outside the main thread, so they are used on
the main thread only; elsewhere (eval worker threads) no timeout is set, and expressions longer than
`MAX_EXPRESSION_CHARS` are not handed to it.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Literal

import sympy
from math_verify import LatexExtractionConfig, parse

from rcsd.trainer.data.questions import LETTERS, Question

RELATIVE_TOLERANCE = 0.05
MATH_VERIFY_TIMEOUT_S = 5  # per parse; on the main thread only (math-verify's timeout is SIGALRM)
MAX_EXPRESSION_CHARS = 300  # longer "expressions" are prose: not parsed as LaTeX

Form = Literal["boxed", "stated", "marked", "number"]


@dataclass(frozen=True)
class Reading:
    """One model answer as read against its question."""

    answer: str | None  # a choice letter (mcq); the answer as written (numeric, free-form); None: none given
    form: Form | None  # where it was read: a \boxed{}, a statement, a marked letter, the last number
    truncated: bool  # a <think> block never closed: no final answer
    correct: bool | None  # None: the reference is free-form, no rule checks it (a rubric judge does)

    @property
    def verifiable(self) -> bool:
        return self.correct is not None


def read_answer(text: str, question: Question) -> Reading:
    """The final answer in a model's `text`, whether it is right, and whether thinking was cut off."""
    final = final_text(text)
    verifiable = _verifiable(question)
    if final is None:
        return Reading(answer=None, form=None, truncated=True, correct=False if verifiable else None)
    answer, form = _extract(final, question)
    correct = is_correct(answer, question) if verifiable else None
    return Reading(answer=answer, form=form, truncated=False, correct=correct)


def extract_answer(text: str, question: Question) -> str | None:
    """The final answer in `text` (a choice letter for multiple choice), or None."""
    final = final_text(text)
    return None if final is None else _extract(final, question)[0]


def is_correct(prediction: str | None, question: Question) -> bool:
    """Whether an extracted answer is the question's answer; False when it cannot be checked."""
    if prediction is None:
        return False
    if question.answer_type == "mcq":
        return _choice_letter(prediction, question) == question.answer
    expected = _reference_value(question)
    value = parse_number(prediction)
    if expected is None or value is None:
        return False
    candidates = [value]
    unit_power = _UNIT_POWER.match(question.unit or "")
    if unit_power:  # the unit "10^{11} J": an answer of 3e11 J means 3 in the unit asked
        candidates.append(value / 10 ** int(unit_power.group(1)))
    return any(_close(candidate, expected) for candidate in candidates)


def reward(text: str, question: Question) -> float:
    """1.0 when the final answer in `text` is right, else 0.0 (also when it cannot be checked)."""
    return 1.0 if read_answer(text, question).correct else 0.0


def final_text(text: str) -> str | None:
    """The text after the last `</think>` (all of it without one); None while a `<think>` is open."""
    _, _, after = text.rpartition("</think>")
    return None if "<think>" in after else after


def parse_number(text: str) -> float | None:
    """The value of an answer (a number or a LaTeX expression, after the last `=` or `\\approx`, units
    stripped); None if it holds none or is not finite."""
    expression = _normalise(text)
    expression = _RELATION.split(expression)[-1].strip()
    if not re.search(r"\d|\\pi", expression):
        return None
    value = _latex_value(expression)
    if value is None:
        value = _first_number(expression)
    return value if value is not None and math.isfinite(value) else None


# --- reading -------------------------------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_STATEMENT = re.compile(  # what follows the match is the stated answer
    r"\b(?:answer|choice|option)\s*(?:\*\*)?\s*"
    r"(?:is|would\s+be|should\s+be|must\s+be|will\s+be|:|=)(?:\s*\*\*)?(?:\s*:)?",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|;|\n")
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
_NUMBER_TOKEN = re.compile(  # a number as written in prose, with its power of ten; not an exponent or index
    r"[-+−]?\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}"
    rf"|(?<![\w.^{{}}])[-+−]?(?:{_NUMBER})"
    r"(?:\s*(?:\\times|\\cdot|×|·|\*|x)\s*10\s*\^\s*(?:\{\s*[-+−]?\d+\s*\}|[-+−]?\d+))?"
    r"|(?<![\w.^{}])10\s*\^\s*(?:\{\s*[-+−]?\d+\s*\}|[-+−]?\d+)"
)


def _extract(final: str, question: Question) -> tuple[str | None, Form | None]:
    """The last explicit answer that holds one; else the last marked letter or number."""
    explicit: list[tuple[int, str, Form]] = [(start, content, "boxed") for start, content in _boxed(final)]
    for match in _STATEMENT.finditer(final):
        rest = final[match.end() :].lstrip()
        end = _SENTENCE_END.search(rest)
        explicit.append((match.start(), rest[: end.start()] if end else rest, "stated"))
    for _, content, form in sorted(explicit, key=lambda item: item[0], reverse=True):
        answer = _answer_in(content, question)
        if answer is not None:
            return answer, form
    if question.answer_type == "mcq":
        letter = _last_marked_letter(final, question)
        return (letter, "marked") if letter else (None, None)
    if question.answer_type == "numeric":
        for token in reversed(list(_NUMBER_TOKEN.finditer(final))):
            if parse_number(token.group(0)) is not None:
                return token.group(0).strip(), "number"
    return None, None


def _boxed(text: str) -> list[tuple[int, str]]:
    """(start, content) of every `\\boxed{...}` / `\\fbox{...}` whose braces close."""
    found = []
    for opening in _BOXED.finditer(text):
        depth = 1
        for i in range(opening.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found.append((opening.start(), text[opening.end() : i].strip()))
                break
    return found


def _answer_in(content: str, question: Question) -> str | None:
    """The answer a box or statement holds: a choice letter (mcq), text with a number (numeric)."""
    content = content.strip().strip("*").strip()
    if not content or re.match(r"not\b", content, re.IGNORECASE):
        return None
    if question.answer_type == "mcq":
        return _choice_letter(content, question)
    if question.answer_type == "numeric":
        return content if parse_number(content) is not None else None
    return content


def _choice_letter(content: str, question: Question) -> str | None:
    """The choice an answer names: a letter (marked ones first), the choice's text, or a number one holds."""
    assert question.choices is not None
    letters = LETTERS[: len(question.choices)]
    plain = _LATEX_WRAPPER.sub(r"\1", content).replace("$", " ")
    marked = _marked_letter(letters).search(plain)
    if marked:
        return next(group for group in marked.groups() if group)
    bare = list(re.finditer(rf"(?<![A-Za-z0-9'])([{letters}])(?![A-Za-z0-9])", plain))
    if bare:  # "I think it is C": a pronoun "I" or article "A" only when nothing else is there
        words = [m for m in bare if not re.match(r"[IA](?:\s+[a-z]|')", plain[m.start() :])]
        return (words or bare)[0].group(1)
    wanted = _plain(plain)
    named = [
        letter for letter, choice in zip(letters, question.choices, strict=True) if _plain(choice) == wanted
    ]
    if len(named) == 1:
        return named[0]
    value = parse_number(content)
    if value is not None:
        holding = [
            letter
            for letter, choice in zip(letters, question.choices, strict=True)
            if (number := parse_number(choice)) is not None and _close(value, number)
        ]
        if len(holding) == 1:
            return holding[0]
    return None


def _marked_letter(letters: str) -> re.Pattern[str]:
    """A choice letter marked as one: "(C)", "**C**", alone, "C)" / "C." / "C:" first, "option C"."""
    one = f"[{letters}]"
    return re.compile(
        rf"\(\s*({one})\s*\)|\*\*\s*\(?({one})\)?\s*\*\*|^\W*({one})\W*$|^\s*({one})\s*[).:](?:\s|$)"
        rf"|\b(?i:option|choice)\s+({one})\b",
        re.MULTILINE,
    )


def _last_marked_letter(text: str, question: Question) -> str | None:
    assert question.choices is not None
    matches = list(_marked_letter(LETTERS[: len(question.choices)]).finditer(text))
    return next(group for group in matches[-1].groups() if group) if matches else None


def _plain(text: str) -> str:
    return re.sub(r"[\s.$*()]+", " ", text).strip().lower()


# --- checking ------------------------------------------------------------------------------------

_RELATION = re.compile(r"=|\\approx|≈|\\simeq|\\sim\b")
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_POWER = r"(?:\s*\^\s*(?:\{[^{}]*\}|[-+]?\d+|\\circ))?"
_UNIT = re.compile(  # units and words with their powers: "\mathrm{~m}^{2}", "kJ mol^-1", "about"; not \cmds
    rf"\\(?:text|textrm|mathrm|mbox|operatorname)\s*\{{[^{{}}]*\}}{_POWER}|(?<![\\A-Za-z])[A-Za-z]{{2,}}{_POWER}"
)
_UNIT_POWER = re.compile(r"^\s*\$?\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?")
_LATEX = [LatexExtractionConfig(boxed_match_priority=0)]


def _verifiable(question: Question) -> bool:
    if question.answer_type == "mcq":
        return True
    return question.answer_type == "numeric" and _reference_value(question) is not None


def _reference_value(question: Question) -> float | None:
    """The reference as a number; None for prose ("about 3 moles"), which only a judge can grade."""
    if re.search(r"(?<![\\A-Za-z])[A-Za-z]{3,}", _LATEX_WRAPPER.sub(" ", question.answer)):
        return None
    return parse_number(question.answer)


def _close(value: float, expected: float) -> bool:
    if expected == 0:
        return abs(value) <= 1e-9
    return abs(value - expected) <= RELATIVE_TOLERANCE * abs(expected)


def _normalise(text: str) -> str:
    """What math-verify does not read: unicode signs, e-notation, "x 10^-3", thousands commas, and
    prose: words would become products of symbols ("approximately" holds Euler's e)."""
    text = text.replace("\u2212", "-").replace("×", r"\times ").replace("·", r"\cdot ")
    text = re.sub(r"\\\(|\\\)|\\\[|\\\]|\$", " ", text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"(?<![\w.])(\d+(?:\.\d*)?|\.\d+)[eE]([-+]?\d+)(?![\w.])", r"\1 \\times 10^{\2}", text)
    text = re.sub(r"(?<=\d)\s*[xX*]\s*(?=10\s*\^)", r" \\times ", text)
    text = _UNIT.sub(" ", text)
    return re.sub(r"\^\s*([-+]?\d+)", r"^{\1}", text)


def _latex_value(expression: str) -> float | None:
    """The value math-verify reads from a LaTeX expression; a product with units (symbols) gives its
    numeric factor; NaN for a parse that is no finite real number; None when it reads nothing."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None
    on_main_thread = threading.current_thread() is threading.main_thread()
    parsed = parse(
        f"${expression}$",
        extraction_config=_LATEX,
        fallback_mode="no_fallback",
        parsing_timeout=MATH_VERIFY_TIMEOUT_S if on_main_thread else None,  # None: no SIGALRM
    )
    for expr in parsed:
        if isinstance(expr, sympy.Equality):
            expr = expr.rhs
        if not isinstance(expr, sympy.Expr):
            continue
        if expr.free_symbols:  # "12.5 m / s": the number is the product's factor without symbols
            if not expr.is_Mul:
                continue
            flat = sympy.Mul(*expr.args)  # math-verify's products come nested and unevaluated
            expr, _ = flat.as_independent(*flat.free_symbols, as_Add=False)
            if expr == 1:
                continue
        try:
            value = complex(expr.evalf())
        except (TypeError, ValueError):
            return math.nan
        return value.real if value.imag == 0 else math.nan
    return None


def _first_number(expression: str) -> float | None:
    match = re.search(rf"[-+]?(?:{_NUMBER})", expression)
    return float(match.group(0).replace(",", "")) if match else None
