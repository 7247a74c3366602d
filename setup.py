"""Maps the part folders (client/, loading/, recipes/, services/, trainer/) into one `rcsd.*` namespace.

pyproject.toml cannot express several roots for one namespace package; this can.
"""

from setuptools import find_namespace_packages, setup

packages: list[str] = []
package_dir: dict[str, str] = {}
for root in ("client", "loading", "recipes", "services", "trainer"):
    for package in find_namespace_packages(root, include=["rcsd.*"]):
        packages.append(package)
        package_dir[package] = f"{root}/{package.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
