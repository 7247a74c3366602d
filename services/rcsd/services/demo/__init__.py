"""`rcsd demo`: both services on the embedded SmolLM2, end to end (see `run.py`)."""
