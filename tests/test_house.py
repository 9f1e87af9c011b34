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


def test_the_checker_finds_each_kind_of_breach(house, tmp_path: pathlib.Path) -> None:
    # A tiny package with one breach of each rule: the measure must report every one (else the tests above
    # could not fail).
    mod = sys.modules["house_tool"]
    pkg = tmp_path / "sftl_dask"
    (pkg / "physics").mkdir(parents=True)
    (pkg / "io").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "physics" / "__init__.py").write_text("")
    (pkg / "io" / "__init__.py").write_text("")
    (pkg / "physics" / "planck.py").write_text("from sftl_dask.geo import box\n")  # physics -> core: up
    (pkg / "geo.py").write_text("from sftl_dask.physics.planck import _radiance\nbox = 1\n")  # cycle, private
    (pkg / "io" / "vimi.py").write_text("from sftl_dask.testbed import world\n")  # io -> testbed
    (pkg / "testbed").mkdir()
    (pkg / "testbed" / "__init__.py").write_text("")
    (pkg / "testbed" / "world.py").write_text("def f():\n" + "    x = 1\n" * 90)
    h = mod.measure(tmp_path)
    assert h.cycles == [["sftl_dask.geo", "sftl_dask.physics.planck"]]
    assert h.private_imports == [f"{pkg / 'geo.py'}:1 imports sftl_dask.physics.planck._radiance"]
    assert any("sftl_dask.io.vimi -> sftl_dask.testbed" in f for f in h.forbidden)
    assert any("up from layer 'physics' to 'core'" in f for f in h.forbidden)
    assert h.long_functions == [("sftl_dask.testbed.world.f", 91)]
