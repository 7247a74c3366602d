"""Versioned prompt templates, loaded from package files; the version travels with every answer."""

from __future__ import annotations

from importlib import resources

import jinja2


class TemplateSet:
    """The templates of one version folder, e.g. `rcsd.services.teacher/templates/v1/*.j2`."""

    def __init__(self, package: str, version: str) -> None:
        folder = resources.files(package) / "templates" / version
        if not folder.is_dir():
            raise ValueError(f"no template version {version!r} in {package}")
        self.version = version
        self._env = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
        )
        self._sources = {
            entry.name.removesuffix(".j2"): entry.read_text(encoding="utf-8")
            for entry in folder.iterdir()
            if entry.name.endswith(".j2")
        }

    def render(self, name: str, **values: object) -> str:
        return self._env.from_string(self._sources[name]).render(**values).strip()
