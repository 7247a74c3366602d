"""Maps the part folders (loading/, recipes/, services/, trainer/) into one `rcsd.*` namespace.

pyproject.toml cannot express several roots for one namespace package; this can. `rcsd.client` is not
among them: the client distribution (client/, `rcsd-client`) alone installs it, and this one depends on
it at the same version, so uninstalling either never removes the other's files.
"""

import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

VERSION_FILE = Path(__file__).parent / "client" / "rcsd" / "client" / "_version.py"
version = re.search(r'__version__ = "([^"]+)"', VERSION_FILE.read_text()).group(1)  # type: ignore[union-attr]
# pyproject.toml's dependencies are dynamic for this pin only; the rest are the client's own.
install_requires = [f"rcsd-client=={version}"]

packages: list[str] = []
package_dir: dict[str, str] = {}
for root in ("loading", "recipes", "services", "trainer"):
    for package in find_namespace_packages(root, include=["rcsd.*"]):
        packages.append(package)
        package_dir[package] = f"{root}/{package.replace('.', '/')}"

setup(version=version, packages=packages, package_dir=package_dir, install_requires=install_requires)
