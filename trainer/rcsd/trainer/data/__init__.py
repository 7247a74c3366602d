"""Training and evaluation data: the question records (`questions`) and the shipped slices beside it."""
