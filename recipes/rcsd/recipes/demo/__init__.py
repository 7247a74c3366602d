"""`rcsd demo`: RCSD end to end on the embedded SmolLM2: both services, rubrics, evaluation, training (see `run.py`)."""
