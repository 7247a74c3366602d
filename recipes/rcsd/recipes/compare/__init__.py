"""`rcsd compare`: methods side by side on one budget (`config` what to run, `run` running it, `report`)."""
