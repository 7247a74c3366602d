"""Length limits of every text field on the wire, in one place.

They are part of the schemas (pydantic `max_length`: OpenAPI shows them, the client's models
refuse an over-long field before sending, the server answers 422 naming it), not settings: a
service cannot change a schema. Generous for real use (a question or a reference answer of
several thousand tokens) and far below what stalls a service: tokenising a 20 MB question
once took 20 s. The request body limit (a service setting, `max_body_bytes`, 16 MiB by
default) bounds what is not text (token id lists, batch sizes).
"""

MAX_QUESTION_CHARS = 20_000  # about 5k tokens of English
MAX_REFERENCE_CHARS = 40_000  # a worked solution
MAX_RATIONALE_CHARS = 40_000  # a teacher rationale given by the caller
MAX_TITLE_CHARS = 200  # of a rubric criterion
MAX_DESCRIPTION_CHARS = 1_000  # of a rubric criterion (the rubric's own check allows 40 words)
MAX_CRITERIA = 50  # criteria in one rubric
MAX_MESSAGES = 64  # chat messages of the student's prompt (system prompt, few-shot turns, the question)
MAX_PROMPT_CHARS = 60_000  # all their contents together
MAX_TEMPLATE_KWARGS = 16  # chat_template_kwargs entries
