"""Package discovery for the repository's layout (the rest of the metadata is in pyproject.toml).

The folders ``edge/``, ``cloud/``, ``models/``, ``protocol/`` install as ``dangol_edge``, ``dangol_cloud``,
``dangol_models``, ``dangol_protocol``. ``[tool.setuptools.packages.find]`` cannot rename folders, so the
packages are found here with :func:`setuptools.find_packages` per folder: a new subfolder with an
``__init__.py`` is in the wheel without editing a list.
"""

from setuptools import find_packages, setup

#: Import name → folder in the repository.
PACKAGE_DIRS = {"dangol_edge": "edge", "dangol_cloud": "cloud", "dangol_models": "models",
                "dangol_protocol": "protocol"}


def discover() -> list[str]:
    """Every package under :data:`PACKAGE_DIRS` (the top ones and each subfolder with ``__init__.py``)."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    out = []
    for name, folder in PACKAGE_DIRS.items():
        out += [name] + [f"{name}.{sub}" for sub in find_packages(os.path.join(here, folder))]
    return out


if __name__ == "__main__":
    setup(packages=discover(), package_dir=PACKAGE_DIRS)
