"""Package discovery for the layout spann is developed in: ``spann/`` plus ``cli/`` and
``datasets/``, which install as ``spann.cli`` and ``spann.datasets``. Every package below these
three roots is found, none is listed by hand (pyproject.toml holds everything else)."""

from setuptools import find_packages, setup

ROOTS = {"spann": "spann", "spann.cli": "cli", "spann.datasets": "datasets"}


def packages() -> list[str]:
    found = []
    for name, where in ROOTS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(where)]
    return sorted(set(found))


setup(packages=packages(), package_dir=ROOTS)
