"""Fails an image build whose vLLM is not the one the engine is written against (deploy/Dockerfile*).

    python3 deploy/check_image.py 0.32.0

A base image or a pip resolve can bring another vLLM; its API moves between minor releases (engine
args are renamed, modules move), which would otherwise surface only when a service loads its model.
So the build stops unless: the installed vLLM is that version, every service module and the vLLM
engine import, and `engine_args` builds vLLM's real `AsyncEngineArgs` from the services' settings
(a renamed or removed engine argument is a TypeError there). Nothing is loaded; no GPU is needed.
"""

from __future__ import annotations

import sys

from packaging.version import Version


def main(argv: list[str]) -> int:
    (expected,) = argv
    import vllm

    # A local build tag (0.32.0+cu130) is the same release; another release is not.
    if Version(vllm.__version__).public != Version(expected).public:
        print(f"vllm {vllm.__version__} is installed, the engine is written for {expected}", file=sys.stderr)
        return 1

    # every service module imports with what is installed
    import rcsd.client
    import rcsd.services.rubric.app
    import rcsd.services.rubric.store_postgres
    import rcsd.services.teacher.app  # noqa: F401
    from rcsd.services.engines.vllm import engine_args
    from rcsd.services.teacher.settings import TeacherSettings

    settings = TeacherSettings(model="check", tensor_parallel_size=2, pipeline_parallel_size=2)
    for on_cpu in (False, True):
        engine_args(settings.engine_config(), on_cpu=on_cpu, served="check")
    print(f"vllm {vllm.__version__}: the services and the vLLM engine import, engine args build")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
