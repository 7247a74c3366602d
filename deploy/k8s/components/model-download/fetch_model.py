"""Fill the shared Hugging Face cache once, or wait until it is filled (components/model-download).

    python3 fetch_model.py download   # the Job rcsd-model-download: every model, then its marker
    python3 fetch_model.py wait       # each replica's init container: until its model's marker exists

The models are the services' own settings, read from the same env vars (`RCSD_<SERVICE>_MODEL`, and
`RCSD_<SERVICE>_REVISION`, else the branch `main`); a local folder is skipped. A marker is written only
once the whole snapshot is in the cache, so no replica starts on a half-downloaded model, and only
one pod writes the cache (a ReadWriteMany volume's file locks are not to be trusted).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path

MODEL_VAR = re.compile(r"RCSD_([A-Z]+)_MODEL")
# What vLLM never loads when a repository has safetensors: other formats' copies of the same weights.
UNUSED = ["original/*", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.ot", "*.tflite"]
UNUSED_WITH_SAFETENSORS = ["*.bin", "*.pt", "*.pth"]
REPORT_EVERY_S = 60


def wanted_models(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(model id, revision) of every RCSD_<SERVICE>_MODEL that names a hub model."""
    models = set()
    for name, value in env.items():
        match = MODEL_VAR.fullmatch(name)
        if match and value and not value.startswith(("/", ".", "~")):
            models.add((value, env.get(f"RCSD_{match.group(1)}_REVISION") or "main"))
    return sorted(models)


def marker(model: str, revision: str) -> Path:
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return home / "rcsd-complete" / f"{model.replace('/', '--')}@{revision}"


def download(model: str, revision: str) -> Path:
    from huggingface_hub import list_repo_files, snapshot_download

    files = list_repo_files(model, revision=revision)
    ignore = UNUSED + (UNUSED_WITH_SAFETENSORS if any(f.endswith(".safetensors") for f in files) else [])
    folder = snapshot_download(model, revision=revision, ignore_patterns=ignore)
    done = marker(model, revision)
    done.parent.mkdir(parents=True, exist_ok=True)
    partial = done.with_name(done.name + ".partial")
    partial.write_text(f"{folder}\n")
    partial.replace(done)  # atomic: a waiting replica sees no marker or a whole one
    print(f"{model}@{revision}: {folder}", flush=True)
    return Path(folder)


def wait(models: list[tuple[str, str]], poll_s: float = 5.0) -> None:
    last_report = float("-inf")
    while missing := [f"{m}@{r}" for m, r in models if not marker(m, r).is_file()]:
        if time.monotonic() - last_report >= REPORT_EVERY_S:
            print(
                f"waiting for {', '.join(missing)} in the cache: the Job rcsd-model-download fills it "
                "(after a model change: kubectl delete job rcsd-model-download, then apply again)",
                flush=True,
            )
            last_report = time.monotonic()
        time.sleep(poll_s)


def main(argv: list[str]) -> int:
    if argv not in (["download"], ["wait"]):
        print(__doc__, file=sys.stderr)
        return 2
    models = wanted_models(os.environ)
    if argv == ["download"]:
        for model, revision in models:
            download(model, revision)
    else:
        wait(models)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
