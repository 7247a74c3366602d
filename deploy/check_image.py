"""Fails an image build whose vLLM is not the one the engine is written against (deploy/Dockerfile*).

    python3 deploy/check_image.py 0.32.0

A base image or a pip resolve can bring another vLLM; its API moves between minor releases (engine
args are renamed, modules move), which would otherwise surface only when a service loads its model.
So the build stops unless: the installed vLLM is that version, every service module and the vLLM
engine import, and `engine_args` builds vLLM's real `AsyncEngineArgs` from the services' settings
(a renamed or removed engine argument is a TypeError there). Nothing is loaded; no GPU is needed.

It also stops a build in which `rcsd.client` is not the client distribution's (`rcsd-client`, client/)
at the version `rcsd` pins: two distributions owning one package means uninstalling either removes
the other's files, and a stale copy would answer the services with an old wire format.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from packaging.version import Version

CLIENT_DISTRIBUTION = "rcsd-client"


def client_owners() -> set[str]:
    """The distributions that installed the `rcsd.client` Python imports: those whose RECORD lists
    its file, else (an editable install) the one whose source folder holds it most closely."""
    import rcsd.client

    module = Path(rcsd.client.__file__).resolve()
    owners, editable_roots = set(), {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        # Installed files are a wheel install's RECORD; an egg-info's SOURCES.txt lists sources, and
        # setuptools carries stale lines over into a rebuilt one.
        installed = distribution.files if distribution.read_text("RECORD") is not None else None
        for file in installed or ():
            if file.as_posix().endswith("rcsd/client/__init__.py"):
                if Path(str(distribution.locate_file(file))).resolve() == module:
                    owners.add(name)
        origin = json.loads(distribution.read_text("direct_url.json") or "{}")
        if origin.get("dir_info", {}).get("editable") and origin["url"].startswith("file:"):
            root = Path(unquote(urlsplit(origin["url"]).path)).resolve()
            if module.is_relative_to(root):
                editable_roots[name] = len(root.parts)
    if not owners and editable_roots:
        owners.add(max(editable_roots, key=editable_roots.__getitem__))
    return owners


def check_client() -> str | None:
    """Why `rcsd.client` is not rcsd-client's, at the version rcsd pins; None when it is."""
    owners = client_owners()
    if owners != {CLIENT_DISTRIBUTION}:
        return f"rcsd.client is installed by {sorted(owners) or 'no distribution'}, not {CLIENT_DISTRIBUTION} alone"
    pin = f"{CLIENT_DISTRIBUTION}=={metadata.version('rcsd')}"
    if pin not in (metadata.requires("rcsd") or []) or metadata.version(
        CLIENT_DISTRIBUTION
    ) != metadata.version("rcsd"):
        return f"rcsd does not pin {pin}, or {CLIENT_DISTRIBUTION} {metadata.version(CLIENT_DISTRIBUTION)} is installed"
    return None


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

    problem = check_client()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    print(
        f"rcsd.client comes from {CLIENT_DISTRIBUTION} {metadata.version(CLIENT_DISTRIBUTION)}, as rcsd pins"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
