"""Packaging beyond what pyproject.toml can say: the YAML trees ``configs/`` and ``experiments/`` ship inside the
wheel as ``da/_data/configs`` and ``da/_data/experiments`` (``da.resources`` finds them by name), without moving
them in the repository."""

from setuptools import find_packages, setup

DATA = {"da._data.configs": "configs", "da._data.experiments": "experiments"}

setup(
    packages=find_packages(include=["da", "da.*"]) + list(DATA),
    package_dir=DATA,
    package_data={name: ["**/*.yaml", "**/*.yml", "**/*.py"] for name in DATA},
    include_package_data=False,
)
