"""Rollout engines: the student samples its own answers from its current weights.

`HfRollout` runs transformers `generate` in the trainer's process (CPU, tests, small runs); `VllmRollout`
(`rcsd.trainer.rollout.vllm`, imported on demand) asks a vLLM server that loads the student's LoRA
adapter after every step.
"""

from rcsd.trainer.rollout.base import Rollout, RolloutEngine, SamplingParams
from rcsd.trainer.rollout.hf import HfRollout

__all__ = ["HfRollout", "Rollout", "RolloutEngine", "SamplingParams"]
