"""The package's version, in a module of its own so that any module can read it without importing the package
(``sftl_dask/__init__.py`` imports the API, which would make every such import a cycle)."""

from __future__ import annotations

__all__ = ["__version__"]

#: The version of sftl-dask (``pyproject.toml`` reads it from here).
__version__ = "0.1.0"
