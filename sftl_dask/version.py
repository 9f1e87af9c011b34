"""The package's version, in a module of its own: products and model cards record it without importing the
package's top level (which registers the ``.sftl`` accessor and imports :mod:`sftl_dask.api`)."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
