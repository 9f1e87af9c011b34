"""Reader for ECOSTRESS / ASTER spectral-library text files (``*.spectrum.txt``).

A file is a header of ``Key: value`` lines (``Name:``, ``Type:``, ``Class:``, ...,
``X Units: Wavelength (micrometers)``, ``Y Units: Reflectance (percentage)``, ...), a blank
line, then two columns of numbers (x, y), usually in decreasing wavelength. Reflectance is
turned into emissivity by Kirchhoff's law, ``emissivity = 1 - reflectance``, which holds for
opaque samples (the library's directional-hemispherical reflectance of rocks, soils,
vegetation, man-made materials). Transparent samples (thin films, water in a cell) need
their transmittance as well and are not handled.

Every problem raises ``ValueError`` whose message starts with the file path and names the
missing or bad key (or the bad data line).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sftl_dask.physics.emissivity import CATEGORIES, Spectrum

__all__ = ["read_spectral_library_dir", "read_spectrum"]

_KEY_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 ._()/-]*?)\s*:\s?(.*)$")
_SPLIT = re.compile(r"[\s,;]+")
# Reflectance slightly outside [0, 1] is measurement noise near total absorption / the
# reference; beyond this margin the file is considered wrong.
_NOISE_MARGIN = 0.02

# Type / Class words that decide the category, checked in this order.
_CATEGORY_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("snow_ice", ("snow", "ice", "frost")),
    ("water", ("water",)),
    ("man_made", ("manmade", "man-made", "man made")),
    ("sand", ("sand",)),
    ("soil", ("soil",)),
    ("vegetation", ("vegetation", "tree", "grass", "shrub", "leaf", "leaves", "plant", "lichen", "moss")),
    ("rock", ("rock", "mineral")),
)


def _decode(raw: bytes) -> str:
    """File text: UTF-8, else Latin-1 (older library files carry Latin-1 degree / micro signs)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _is_data_row(line: str) -> bool:
    """True if the line starts with two numbers (an x y row)."""
    fields = [f for f in _SPLIT.split(line.strip()) if f]
    if len(fields) < 2:
        return False
    try:
        float(fields[0]), float(fields[1])
    except ValueError:
        return False
    return True


def _split_header(path: Path, lines: list[str]) -> tuple[dict[str, str], int]:
    """Header mapping (lower-case keys) and the index of the first data line.

    The header ends at the first blank line after a key, or (files without that blank
    line) at the first line that starts with two numbers.
    """
    header: dict[str, str] = {}
    last_key: str | None = None
    for i, line in enumerate(lines):
        if not line.strip():
            if header:
                return header, i + 1
            continue
        if _is_data_row(line):
            return header, i
        match = _KEY_RE.match(line)
        if match:
            last_key = match.group(1).strip().lower()
            header[last_key] = match.group(2).strip()
        elif last_key is not None:
            header[last_key] += " " + line.strip()  # continued value (multi-line Description)
        else:
            raise ValueError(f"{path}: line {i + 1} is neither a 'Key: value' header line nor data: {line.strip()!r}")
    return header, len(lines)


def _x_to_wavelength_um(path: Path, units: str, x: np.ndarray) -> np.ndarray:
    u = units.lower()
    if "wavenumber" in u or "cm-1" in u or "cm^-1" in u or "1/cm" in u:
        if np.any(x <= 0):
            raise ValueError(f"{path}: X Units {units!r}: wavenumbers must be > 0")
        return 1.0e4 / x
    if "wavelength" in u or "micro" in u or "nano" in u:
        if "nanomet" in u or re.search(r"\bnm\b", u):
            return x / 1000.0
        if "micromet" in u or "micron" in u or "µm" in u or re.search(r"\bum\b", u):
            return x
    raise ValueError(
        f"{path}: X Units {units!r} not understood (expected 'Wavelength (micrometers)' or 'Wavenumber (cm-1)')"
    )


def _y_to_emissivity(path: Path, units: str, y: np.ndarray, lines: np.ndarray) -> np.ndarray:
    u = units.lower()
    if "emissivity" in u:
        eps = y / 100.0 if "percent" in u else y
    elif "reflectance" in u:
        if "percent" in u:
            eps = 1.0 - y / 100.0
        elif "fraction" in u:
            eps = 1.0 - y
        else:
            raise ValueError(f"{path}: Y Units {units!r}: say whether reflectance is in percentage or fraction")
    else:
        raise ValueError(
            f"{path}: Y Units {units!r} not understood (expected 'Reflectance (percentage)', "
            "'Reflectance (fraction)' or 'Emissivity')"
        )
    bad = (eps < -_NOISE_MARGIN) | (eps > 1.0 + _NOISE_MARGIN)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: line {int(lines[i])}: Y value {y[i]:g} gives emissivity {eps[i]:.3g}, outside [0, 1] "
            f"({int(bad.sum())} row(s) like it; values span [{eps.min():.3g}, {eps.max():.3g}] with "
            f"Y Units {units!r}: wrong units?)"
        )
    return np.clip(eps, 0.0, 1.0)


def _category(path: Path, header: dict[str, str]) -> str:
    """Category from ``Type``, else ``Class`` / ``Subclass``, else ``Name`` (first that maps)."""
    for keys in (("type",), ("class", "subclass"), ("name",)):
        text = " ".join(header.get(k, "") for k in keys).lower()
        for category, words in _CATEGORY_WORDS:
            if any(w in text for w in words):
                return category
    raise ValueError(
        f"{path}: Type {header.get('type', '')!r} / Class {header.get('class', '')!r} maps to none of "
        f"{', '.join(CATEGORIES)}; pass category= explicitly"
    )


def read_spectrum(path: str | Path, *, category: str | None = None) -> Spectrum:
    """Read one ECOSTRESS / ASTER spectral-library file as an emissivity spectrum.

    Parameters
    ----------
    path : str or Path
        A ``*.spectrum.txt`` file.
    category : str, optional
        Category of the spectrum (one of :data:`~sftl_dask.physics.emissivity.CATEGORIES`);
        default: derived from the header's ``Type`` (else ``Class`` / ``Subclass``, else
        ``Name``), e.g. ``Type: Soil`` -> soil, ``Type: Mineral`` -> rock, ``Type: Manmade`` ->
        man_made. Sand samples are typed ``Soil`` in the library: pass ``category="sand"``.

    Returns
    -------
    Spectrum
        Wavelength (um, increasing; duplicated wavelengths averaged) and emissivity
        (unitless: ``1 - reflectance`` for reflectance files), named after ``Name:``, with the
        file name, ``Sample No.`` and ``Owner`` in ``source``.

    Raises
    ------
    ValueError
        Message starting with the file path, when the file cannot be read, ``Name``,
        ``X Units`` or ``Y Units`` is missing or empty, the units are not understood, there are
        fewer than two data rows, a data row is not numeric, or the category cannot be derived.
    """
    path = Path(path)
    try:
        text = _decode(path.read_bytes())
    except OSError as err:
        raise ValueError(f"{path}: cannot read file ({err.strerror or err})") from err
    lines = text.splitlines()
    header, start = _split_header(path, lines)
    for key in ("name", "x units", "y units"):
        if not header.get(key):
            label = {"name": "Name", "x units": "X Units", "y units": "Y Units"}[key]
            raise ValueError(f"{path}: header key '{label}:' is missing or empty")
    rows: list[tuple[float, float]] = []
    linenos: list[int] = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        fields = [f for f in _SPLIT.split(line.strip()) if f]
        try:
            if len(fields) < 2:
                raise ValueError
            rows.append((float(fields[0]), float(fields[1])))
            linenos.append(lineno)
        except ValueError:
            raise ValueError(f"{path}: line {lineno}: data row is not two numbers (x and the emissivity or "
                             f"reflectance column): {line.strip()!r}") from None
    if len(rows) < 2:
        raise ValueError(f"{path}: no numeric data (need at least two 'x y' rows after the header)")
    xy = np.array(rows)
    if not np.all(np.isfinite(xy)):
        raise ValueError(f"{path}: data contain non-finite numbers")
    wl = _x_to_wavelength_um(path, header["x units"], xy[:, 0])
    eps = _y_to_emissivity(path, header["y units"], xy[:, 1], np.array(linenos))
    # Sort by wavelength and average repeated wavelengths (detector overlaps).
    wl_u, inverse = np.unique(wl, return_inverse=True)
    eps_u = np.bincount(inverse, weights=eps) / np.bincount(inverse)
    cat = category if category is not None else _category(path, header)
    parts = [f"file {path.name}"]
    parts += [f"{k.title()}: {header[k]}" for k in ("sample no.", "owner", "measurement") if header.get(k)]
    parts.append("ECOSTRESS/ASTER spectral library format; emissivity = 1 - reflectance (opaque sample)"
                 if "reflectance" in header["y units"].lower() else "ECOSTRESS/ASTER spectral library format")
    try:
        return Spectrum(header["name"], cat, wl_u, eps_u, "; ".join(parts))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def read_spectral_library_dir(
    folder: str | Path,
    pattern: str = "*.spectrum.txt",
    *,
    category: str | None = None,
) -> tuple[Spectrum, ...]:
    """Read every spectral-library file in ``folder`` matching ``pattern`` (sorted by file name).

    Parameters
    ----------
    folder : str or Path
        Directory holding the files (not searched recursively).
    pattern : str, optional
        Glob pattern, ``"*.spectrum.txt"``.
    category : str, optional
        Category for all files (default: derived per file, see :func:`read_spectrum`).

    Returns
    -------
    tuple of Spectrum

    Raises
    ------
    ValueError
        If ``folder`` is not a directory, no file matches, or a file is broken (the message
        starts with that file's path).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory")
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not files:
        raise ValueError(f"{folder}: no files match {pattern!r}")
    return tuple(read_spectrum(p, category=category) for p in files)
