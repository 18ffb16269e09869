"""The example bundles have one source, bundles/; the package ships the same bytes as package data."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import rule_engine

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "bundles"
PACKAGED = Path(rule_engine.__file__).parent / "bundles"


def test_packaged_bundles_equal_the_source_bundles() -> None:
    """Every bundles/*.json is shipped under rule_engine/bundles with the same bytes, and nothing else is."""
    source = {p.name: p.read_bytes() for p in SOURCE.glob("*.json")}
    assert source, "no example bundles in bundles/"
    shipped = {
        entry.name: entry.read_bytes()
        for entry in resources.files("rule_engine").joinpath("bundles").iterdir()
        if entry.name.endswith(".json")
    }
    assert shipped == source


def test_the_packaged_copies_are_links_to_the_one_source() -> None:
    """rule_engine/bundles holds relative symlinks into bundles/, so an edit cannot reach only one copy."""
    for path in PACKAGED.glob("*.json"):
        assert path.is_symlink(), f"{path.name} is a copy, not a link to bundles/{path.name}"
        assert not Path(path.readlink()).is_absolute()
        assert path.resolve() == (SOURCE / path.name).resolve()


def test_the_build_ships_them_as_package_data() -> None:
    """pyproject.toml declares the JSON files as package data (the wheel build copies the link targets)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "bundles/*.json" in config["tool"]["setuptools"]["package-data"]["rule_engine"]
