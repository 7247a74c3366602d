"""The teacher scoring service: `POST /teacher_logprobs`."""
