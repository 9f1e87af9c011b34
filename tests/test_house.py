"""The house rules of DESIGN.md, held on every test run (``tools/house.py`` prints the same figures)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def house():  # the tool module's House
    spec = importlib.util.spec_from_file_location("house_tool", ROOT / "tools" / "house.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["house_tool"] = mod
    spec.loader.exec_module(mod)
    return mod.measure(ROOT)


def test_the_package_has_no_import_cycle(house) -> None:
    assert house.cycles == []


def test_no_import_runs_against_the_layers(house) -> None:
    # training -> testbed/pipelines, validate -> training, models -> simulate, io -> testbed, staging -> io,
    # physics/geo/staging/plotting importing anything above them: none, straight or through another module.
    assert house.forbidden == []


def test_no_private_name_is_imported_across_modules(house) -> None:
    assert house.private_imports == []


def test_long_functions_say_why_they_are_long(house) -> None:
    # A function over 80 lines carries "Why this is long:" in its docstring.
    assert house.long_functions == []
