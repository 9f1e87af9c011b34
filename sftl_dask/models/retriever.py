"""One small interface over every model the project exports, for retrieval.

A :class:`Retriever` names the features it needs (the feature function's names) and maps them to
LST and its standard uncertainty (K); the retrieval graph never asks which kind of model it runs:

- :class:`TorchRetriever`: a torch artifact (DNN, TrF, CNN), its ``torch.export`` program where the
  artifact carries one, else its TorchScript file; CPU or CUDA; fp32 or bf16 (autocast);
- :class:`TreeRetriever`: an RF or LGBM artifact;
- :class:`SplitWindowRetriever`: the coefficients written by ``sftl fit-sw``.

:func:`open_retriever` opens any of them from a path. On Dask the model travels as a
:class:`ModelRef` (path + sha256), never as an object (a TorchScript module cannot be pickled), and
:func:`cached_retriever` loads it once per worker process, checking the digest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from sftl_dask.models.artifact import ArtifactError, artifact_digest, load_artifact, verify_artifact
from sftl_dask.models.error_model import (
    ERROR_MODEL_FORMAT,
    apply_error_model,
    calibration_label,
    check_error_model,
)
from sftl_dask.physics.splitwindow import SplitWindowCoefficients, apply_split_window

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "ModelRef",
    "Retriever",
    "SplitWindowRetriever",
    "TorchRetriever",
    "TreeRetriever",
    "cached_retriever",
    "load_count",
    "model_digest",
    "open_retriever",
]

#: Devices a retriever may run on.
DEVICES = ("cpu", "cuda")
#: Arithmetic of torch models: full float32, or bfloat16 matrix products (autocast).
PRECISIONS = ("fp32", "bf16")
#: Rows per model call: cache-sized on CPU (shared/reference/PERF.md: ~8k rows; larger batches are
#: 3x slower), 10^5-10^6 on a GPU to amortise the ~0.3 ms fixed cost of a call.
CPU_BATCH = 8192
GPU_BATCH = 1 << 18
_SW_BATCH = 65536  # the split-window runs in cache-resident blocks of its own size
_ERROR_FEATURES = ("wvc", "emis_mean", "sec_vza")


@runtime_checkable
class Retriever(Protocol):
    """What the retrieval graph needs of a model.

    Attributes
    ----------
    features : tuple of str
        Features :meth:`predict` reads, from :data:`~sftl_dask.features.FEATURES`.
    digest : str
        sha256 pinning the model (the artifact's manifest, or the coefficient file).
    batch_size : int
        Rows per :meth:`predict` call the model runs best at.
    training_range : dict
        ``[min, max]`` per input group (``bt`` K, ``wvc`` g cm-2, ``vza`` deg, ``emis``) of the
        pre-training data; groups it does not know are absent.
    """

    features: tuple[str, ...]
    digest: str
    batch_size: int
    training_range: dict[str, tuple[float, float]]

    def predict(self, features: Mapping[str, NDArray[np.float32]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """LST and its standard uncertainty (K, float32, shape ``(n,)``) from 1-D feature arrays."""
        ...

    def describe(self) -> dict[str, str]:
        """What the product's global attributes say of the model."""
        ...


def _range(card_range: Mapping[str, Any] | None) -> dict[str, tuple[float, float]]:
    return {k: (float(v[0]), float(v[1])) for k, v in (card_range or {}).items()}


def _with_error_features(names: tuple[str, ...]) -> tuple[str, ...]:
    return (*names, *[f for f in _ERROR_FEATURES if f not in names])


class _ArtifactRetriever:
    """Shared part of the artifact retrievers: features, error model, description."""

    def __init__(self, loaded: Any, digest: str) -> None:
        card = loaded.card
        if "uncertainty" not in card:
            raise ArtifactError(f"{loaded.path / 'card.json'}: has no per-pixel error model ('uncertainty'); "
                                "export the model with `sftl train` to add one")
        self.loaded = loaded
        self.card = card
        self.error_model = check_error_model(card["uncertainty"], f"{loaded.path / 'card.json'}: uncertainty")
        self.model_features = loaded.features
        self.features = _with_error_features(self.model_features)
        self.digest = digest
        self.training_range = _range(card.get("pretraining_range"))

    def _stack(self, features: Mapping[str, NDArray[np.float32]]) -> NDArray[np.float32]:
        return np.ascontiguousarray(np.stack([features[f] for f in self.model_features], axis=1), dtype=np.float32)

    def _uncertainty(self, features: Mapping[str, NDArray[np.float32]]) -> NDArray[np.float32]:
        return apply_error_model(self.error_model, features)

    def describe(self) -> dict[str, str]:
        c = self.card
        return {
            "model_kind": str(c.get("model", "")), "model_strategy": str(c.get("strategy", "")),
            "model_direction": str(c.get("direction", "")), "model_name": str(c.get("name", "")),
            "model_artifact": str(self.loaded.path), "model_sha256": self.digest,
            "model_program": self.loaded.program, "model_features": " ".join(self.model_features),
            "uncertainty_method": str(self.error_model.get("method", "")),
            # source-fitted, target-calibrated (k, method), or uncalibrated for a card older than the calibration
            "uncertainty_calibration": calibration_label(self.error_model),
            # the scene term is systematic (site and ancillary-data errors, bias included): aggregates
            # over time must not divide it by sqrt(n) (sftl_dask.api)
            "uncertainty_systematic_k": f"{float(self.error_model.get('sigma_scene_k', 0.0)):.4f}",
        }


class TorchRetriever(_ArtifactRetriever):
    """A torch artifact (DNN, TrF, CNN) as a retriever.

    Parameters
    ----------
    loaded : LoadedModel
        From :func:`~sftl_dask.models.artifact.load_artifact` (on ``device``).
    digest : str
        The artifact's digest.
    device : str
        ``"cpu"`` or a CUDA device. On CUDA, batches go through pinned host memory with
        non-blocking copies, and results come back with ``.cpu()`` before numpy.
    precision : {"fp32", "bf16"}
        ``bf16`` runs the matrix products in bfloat16 (``torch.autocast``); the normalisation
        and output scaling stay in float32.
    """

    def __init__(self, loaded: Any, digest: str, *, device: str = "cpu", precision: str = "fp32") -> None:
        super().__init__(loaded, digest)
        import torch  # lazy here and below: a worker retrieving with a tree or split-window model never imports torch

        self.device = torch.device(device)
        self.precision = precision
        self.batch_size = GPU_BATCH if self.device.type == "cuda" else CPU_BATCH

    def predict(self, features: Mapping[str, NDArray[np.float32]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        import torch

        x = torch.from_numpy(self._stack(features))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
            y = self.loaded.model(x)
        lst = y.float().cpu().numpy()  # .cpu() first: a CUDA tensor has no numpy view
        return lst, self._uncertainty(features)

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "model_precision": self.precision}


class TreeRetriever(_ArtifactRetriever):
    """An RF (forest JSON) or LGBM (LightGBM text) artifact as a retriever; CPU only."""

    batch_size = 65536
    device = "cpu"

    def predict(self, features: Mapping[str, NDArray[np.float32]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        return self.loaded.predict(self._stack(features)), self._uncertainty(features)


class SplitWindowRetriever:
    """Split-window coefficients (``sftl fit-sw``) as a retriever.

    The uncertainty is the held-out simulated RMSE of the pixel's WVC x view-angle window: the
    algorithm's own error under the radiative transfer, without what real scenes add (a lower bound).
    """

    features = ("bt_10_80", "bt_11_95", "emis_mean", "emis_diff", "wvc", "sec_vza")
    batch_size = _SW_BATCH
    device = "cpu"

    def __init__(self, doc: Mapping[str, Any], path: Path, digest: str) -> None:
        self.coeffs = SplitWindowCoefficients.from_dict(doc)
        if (self.coeffs.channel_i, self.coeffs.channel_j) != ("bt_10_80", "bt_11_95"):
            raise ValueError(f"{path}: split-window pair {self.coeffs.channel_i}/{self.coeffs.channel_j}; "
                             "retrieval takes the 10.8/11.95 um pair")
        self.path = path
        self.digest = digest
        # an error model written beside the coefficients (`sftl train`'s split_window.json: a scene term from
        # matchups), else the windows' held-out simulated RMSE alone
        own = doc.get("uncertainty")
        self.own_error_model = own is not None
        self.error_model = check_error_model(own, f"{path}: uncertainty") if own is not None \
            else _split_window_error_model(self.coeffs)
        rng = _range(doc.get("pretraining_range"))
        fitted = [w for w in self.coeffs.windows if w.fitted]
        rng.setdefault("wvc", (min(w.wvc_min for w in fitted), max(w.wvc_max for w in fitted)))
        rng.setdefault("vza", (min(w.vza_min for w in fitted), max(w.vza_max for w in fitted)))
        self.training_range = rng

    def predict(self, features: Mapping[str, NDArray[np.float32]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        e = features["emis_mean"]
        half = features["emis_diff"] * np.float32(0.5)
        # back from the features to the channel emissivities and the angle (only its band matters);
        # the bounds only undo float32 rounding at the range ends
        e_i = np.minimum(e + half, np.float32(1.0))
        e_j = np.minimum(e - half, np.float32(1.0))
        np.maximum(e_i, np.float32(0.5), out=e_i)
        np.maximum(e_j, np.float32(0.5), out=e_j)
        vza = np.degrees(np.arccos(np.minimum(np.reciprocal(features["sec_vza"]), np.float32(1.0))))
        lst = apply_split_window(self.coeffs, features["bt_10_80"], features["bt_11_95"], e_i, e_j,
                                 features["wvc"], vza)
        return lst.astype(np.float32), apply_error_model(self.error_model, features)

    def describe(self) -> dict[str, str]:
        return {"model_kind": "split-window", "model_strategy": "", "model_direction": "",
                "model_name": self.coeffs.form, "model_artifact": str(self.path), "model_sha256": self.digest,
                "model_program": "json", "model_features": " ".join(self.features),
                "uncertainty_method": str(self.error_model.get("method", "")) if self.own_error_model else
                "held-out simulated RMSE of the pixel's WVC x VZA split-window window (no scene term: a lower bound)",
                "uncertainty_calibration": calibration_label(self.error_model) if self.own_error_model else
                "uncalibrated (simulation only, no scene term)",
                "uncertainty_systematic_k": f"{float(self.error_model.get('sigma_scene_k', 0.0)):.4f}"}


def _split_window_error_model(coeffs: Any) -> dict[str, Any]:
    """The split-window's windows as an error model: sigma = held-out RMSE of the pixel's window."""
    bands: dict[tuple[float, float], list[Any]] = {}
    for w in coeffs.windows:
        bands.setdefault((w.vza_min, w.vza_max), []).append(w)
    vza_keys = sorted(bands)
    wvc_windows = sorted({(w.wvc_min, w.wvc_max) for w in coeffs.windows})
    wvc_edges = [0.5 * (b[0] + a[1]) for a, b in itertools.pairwise(wvc_windows)]
    sec_edges = [1.0 / math.cos(math.radians(hi)) for _, hi in vza_keys[:-1]]
    overall = coeffs.overall.get("rmse_holdout_k") or 1.0
    sigma = np.full((len(wvc_windows), 1, len(vza_keys)), float(overall))
    for v, key in enumerate(vza_keys):
        for w in bands[key]:
            rmse = w.rmse_holdout_k if w.rmse_holdout_k is not None else w.rmse_train_k
            if w.fitted and rmse:
                sigma[wvc_windows.index((w.wvc_min, w.wvc_max)), 0, v] = rmse
    return check_error_model({
        "format": ERROR_MODEL_FORMAT, "method": "split-window window held-out RMSE",
        "bins": {"wvc": wvc_edges, "emis_mean": [], "sec_vza": sec_edges},
        "sigma_model_k": sigma.tolist(), "sigma_scene_k": 0.0,
    }, "split-window error model")


def model_digest(path: str | Path) -> str:
    """The sha256 pinning a model: an artifact's manifest digest, or a coefficient file's own.

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path``.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / "sha256").is_file():
            raise ArtifactError(f"{p / 'sha256'}: missing; the artifact cannot be verified")
        return artifact_digest(p)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no model artifact or split-window coefficients here")
    return hashlib.sha256(p.read_bytes()).hexdigest()


def open_retriever(path: str | Path, *, device: str = "cpu", precision: str = "fp32",
                   program: str = "auto") -> Retriever:
    """Open a model artifact directory or a split-window JSON as a :class:`Retriever`.

    Parameters
    ----------
    path : path
        An artifact directory (``sftl train``) or split-window coefficients (``sftl fit-sw``).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (torch models only; trees and the split-window run on CPU).
    precision : {"fp32", "bf16"}
        Arithmetic of torch models.
    program : {"auto", "export", "torchscript"}
        For torch artifacts: ``auto`` takes the ``torch.export`` program where the artifact has one.

    Raises
    ------
    ArtifactError
        If the artifact fails its hashes, is malformed, or has no error model.
    ValueError
        If the coefficient file is not valid JSON or not split-window coefficients, or an option is unknown.
    FileNotFoundError
        If nothing is at ``path``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} unknown; choose from {', '.join(PRECISIONS)}")
    if device.split(":")[0] not in DEVICES:
        raise ValueError(f"device {device!r} unknown; choose from cpu, cuda, cuda:N")
    p = Path(path)
    digest = model_digest(p)
    if p.is_dir():
        card = verify_artifact(p)
        if program == "auto":
            program = "export" if "export" in card.get("programs", {}) else "torchscript"
        on = device if card["kind"] == "torchscript" else "cpu"
        loaded = load_artifact(p, device=on, program=program)
        if loaded.kind == "torchscript":
            return TorchRetriever(loaded, digest, device=on, precision=precision)
        return TreeRetriever(loaded, digest)
    try:
        doc = json.loads(p.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: not a model artifact directory nor split-window JSON ({exc})") from None
    try:
        return SplitWindowRetriever(doc, p, digest)
    except ValueError as exc:
        raise ValueError(f"{p}: not split-window coefficients ({exc})") from None


@dataclass(frozen=True)
class ModelRef:
    """A model by reference, as it travels in a Dask graph: path, digest and how to run it."""

    path: str
    digest: str
    device: str = "cpu"
    precision: str = "fp32"
    program: str = "auto"


_CACHE: dict[ModelRef, Retriever] = {}
_LOADS: Counter[str] = Counter()
_LOCK = threading.Lock()


def cached_retriever(ref: ModelRef) -> Retriever:
    """The retriever of ``ref``, loaded once per process (thread-safe) and checked against its digest.

    Raises
    ------
    ArtifactError
        If the model at ``ref.path`` no longer has the digest the run was planned with.
    """
    with _LOCK:
        hit = _CACHE.get(ref)
        if hit is not None:
            return hit
        retriever = open_retriever(ref.path, device=ref.device, precision=ref.precision, program=ref.program)
        if retriever.digest != ref.digest:
            raise ArtifactError(f"{ref.path}: changed since the run was planned (sha256 {retriever.digest[:12]}..., "
                                f"expected {ref.digest[:12]}...)")
        _CACHE[ref] = retriever
        _LOADS[ref.digest] += 1
        return retriever


def load_count(digest: str | None = None) -> int:
    """How many times this process loaded a model (``digest``) or any model."""
    return _LOADS[digest] if digest else sum(_LOADS.values())

