"""The model artifact (DESIGN.md, "Model artifact"): export and verified, pickle-free loading.

An artifact is a directory of exactly three files:

- the model: ``model.pt`` (TorchScript; normalisation inside, LoRA merged, adapters kept in the
  graph), ``model.txt`` (LightGBM text model) or ``model.json`` (RF as arrays per tree);
- ``card.json``: features in order with units, model, strategy, stages, training tables with their
  sha256, metrics, versions, creation time, and how the export was checked;
- ``sha256``: ``<hex>  <name>`` for the two files above.

:func:`export_artifact` writes into a temporary sibling directory and renames it into place, so a
half-written artifact never appears under the final name; it refuses to export a model whose
reloaded copy disagrees with the in-memory one by more than 1e-4 K. :func:`load_artifact` verifies
every hash before reading anything, refuses unlisted files, and loads with ``torch.jit.load`` /
LightGBM's text parser / ``json``: nothing is unpickled.

TorchScript modules cannot be pickled: to use an artifact on Dask workers, ship its *path* and
load it once per worker.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import platform
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sftl_dask.features import FEATURE_UNITS, FEATURES

__all__ = ["ARTIFACT_FORMAT", "ArtifactError", "LoadedModel", "export_artifact", "load_artifact", "verify_artifact"]

#: Format tag written into ``card.json``.
ARTIFACT_FORMAT = "sftl-dask-artifact/1"
#: Largest disagreement allowed between the in-memory and the exported model (K).
EXPORT_TOLERANCE_K = 1e-4

_CARD = "card.json"
_SHA = "sha256"
_MODEL_FILES = {"torchscript": "model.pt", "lightgbm-text": "model.txt", "forest-json": "model.json"}
_SHA_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)$")
_CHECK_ROWS = 4096


class ArtifactError(ValueError):
    """An artifact is missing a file, has an unexpected one, fails its hashes, or is malformed."""


@contextmanager
def _quiet_jit() -> Iterator[None]:
    # torch >= 2.9 flags torch.jit.* as deprecated; the artifact format is TorchScript by design
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _jsonable(obj: Any, where: str = "card") -> Any:
    """Plain JSON values: numpy scalars/arrays and paths converted, non-finite floats → None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where)
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), where)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    raise ValueError(f"export_artifact: {where} is a {type(obj).__name__}, not JSON-serialisable")


def _card_features(card: Mapping[str, Any], n_features: int) -> list[dict[str, str]]:
    given = card.get("features")
    if given is None:
        if n_features != len(FEATURES):
            raise ValueError(f"export_artifact: the model takes {n_features} features, not {len(FEATURES)}; "
                             "list them in card['features']")
        names = list(FEATURES)
    else:
        names = [f["name"] if isinstance(f, Mapping) else str(f) for f in given]
    unknown = [n for n in names if n not in FEATURE_UNITS]
    if unknown:
        raise ValueError(f"export_artifact: card features {unknown} are not model features ({', '.join(FEATURES)})")
    if len(names) != n_features:
        raise ValueError(f"export_artifact: card lists {len(names)} features, the model takes {n_features}")
    return [{"name": n, "unit": FEATURE_UNITS[n]} for n in names]


def _training_tables(tables: Any) -> dict[str, Any]:
    if tables is None:
        return {}
    if not isinstance(tables, Mapping):
        raise ValueError("export_artifact: card['training_tables'] must map table names to {path, sha256}")
    for name, t in tables.items():
        sha = t.get("sha256") if isinstance(t, Mapping) else None
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise ValueError(f"export_artifact: training table {name!r} needs a sha256 (64 hex digits)")
    return dict(tables)


def _versions(kind: str) -> dict[str, str]:
    import sftl_dask

    v = {"sftl_dask": sftl_dask.__version__, "numpy": np.__version__, "python": platform.python_version()}
    if kind == "torchscript":
        import torch

        v["torch"] = torch.__version__
    elif kind == "lightgbm-text":
        import lightgbm

        v["lightgbm"] = lightgbm.__version__
    else:
        import sklearn

        v["scikit-learn"] = sklearn.__version__
    return v


def _uniform_inputs(lo: NDArray[np.float64], hi: NDArray[np.float64], seed: int) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return rng.uniform(lo, hi, size=(_CHECK_ROWS, lo.size)).astype(np.float32)


def _max_diff(a: ArrayLike, b: ArrayLike) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _export_torch(model: Any, seed: int) -> tuple[bytes, dict[str, Any]]:
    import torch

    from sftl_dask.models.finetune import LoRAConv1d, LoRALinear, _Adapter, merge_and_unload
    from sftl_dask.models.trainer import predict_torch

    reference = copy.deepcopy(model).cpu().eval()
    n_lora = sum(isinstance(m, LoRALinear | LoRAConv1d) for m in reference.modules())
    n_adapters = sum(isinstance(m, _Adapter) for m in reference.modules())
    export = merge_and_unload(copy.deepcopy(reference)).eval()
    buf = io.BytesIO()
    with _quiet_jit():
        torch.jit.save(torch.jit.script(export), buf)
        reloaded = torch.jit.load(io.BytesIO(buf.getvalue()), map_location="cpu")
    # realistic inputs: the pre-training table's feature distribution (mean ± 3 sd, Gaussian)
    norm = getattr(reference, "norm", None)
    rng = np.random.default_rng(seed)
    z = np.clip(rng.standard_normal((_CHECK_ROWS, reference.n_features)), -3, 3)
    if norm is not None:
        x = norm.x_mean.numpy() + norm.x_std.numpy() * z
    else:
        x = z
    x = x.astype(np.float32)
    diff = _max_diff(predict_torch(reference, x), predict_torch(reloaded, x))
    info: dict[str, Any] = {"lora_layers_merged": n_lora, "adapters": n_adapters, "max_abs_diff_k": diff}
    if norm is not None:
        info["normalisation"] = {"feature_mean": norm.x_mean.tolist(), "feature_std": norm.x_std.tolist(),
                                 "lst_mean_k": float(norm.y_mean), "lst_std_k": float(norm.y_std)}
    return buf.getvalue(), info


def _export_rf(model: Any, seed: int) -> tuple[bytes, dict[str, Any]]:
    from sftl_dask.models.trees import ForestPredictor

    doc = model.to_json_dict()
    data = json.dumps(doc, separators=(",", ":")).encode()
    # inputs spanning every split threshold of the forest
    lo = np.full(model.n_features, np.inf)
    hi = np.full(model.n_features, -np.inf)
    for t in doc["trees"]:
        f = np.asarray(t["feature"])
        thr = np.asarray(t["threshold"])
        split = f >= 0
        np.minimum.at(lo, f[split], thr[split])
        np.maximum.at(hi, f[split], thr[split])
    unused = ~np.isfinite(lo)
    lo[unused], hi[unused] = 0.0, 1.0
    pad = 0.05 * (hi - lo) + 1e-3
    x = _uniform_inputs(lo - pad, hi + pad, seed)
    diff = _max_diff(model.predict(x), ForestPredictor(json.loads(data)).predict(x))
    return data, {"max_abs_diff_k": diff, "n_trees": model.n_trees}


def _export_lgbm(model: Any, seed: int) -> tuple[bytes, dict[str, Any]]:
    import lightgbm as lgb

    text = model.model_to_string()
    # inputs spanning the training range of each feature, as recorded in the model ("[min:max]")
    lo, hi = np.zeros(model.n_features), np.ones(model.n_features)
    infos = re.search(r"^feature_infos=(.*)$", text, flags=re.MULTILINE)
    for i, item in enumerate(infos.group(1).split() if infos else []):
        m = re.fullmatch(r"\[(.+):(.+)\]", item)
        if m and i < model.n_features:
            lo[i], hi[i] = float(m.group(1)), float(m.group(2))
    x = _uniform_inputs(lo, hi + 1e-6, seed)
    reloaded = lgb.Booster(model_str=text)
    diff = _max_diff(model.predict(x), reloaded.predict(x))
    return text.encode(), {"max_abs_diff_k": diff, "n_trees": model.n_trees}


def _kind(model: Any) -> str:
    from sftl_dask.models.trees import LGBM, RF

    if isinstance(model, RF):
        return "forest-json"
    if isinstance(model, LGBM):
        return "lightgbm-text"
    try:
        import torch

        if isinstance(model, torch.nn.Module) and hasattr(model, "n_features"):
            return "torchscript"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    raise TypeError(f"export_artifact: cannot export a {type(model).__name__} (need an LST torch model, RF or LGBM)")


def _default_strategy(info: Mapping[str, Any]) -> str:
    if info.get("lora_layers_merged"):
        return "lora"
    if info.get("adapters"):
        return "adapter"
    return "none"


def export_artifact(model: Any, out_dir: str | Path, card: Mapping[str, Any], *, seed: int = 0) -> Path:
    """Write ``model`` as an artifact directory ``out_dir``; returns its path.

    Parameters
    ----------
    model : LST torch model, RF or LGBM
        Torch models are copied, LoRA layers merged into plain layers, then scripted (the
        in-memory model is not changed). Adapters stay in the scripted graph.
    out_dir : path
        The artifact directory. An existing artifact (or empty directory) there is replaced; any
        other existing path is refused.
    card : mapping
        What the caller knows: ``model``, ``strategy``, ``stages``, ``training_tables``
        (``{name: {"path": ..., "sha256": ...}}``), ``metrics``, and anything else JSON-serialisable.
        ``features`` (names) is needed only when the model does not take all of :data:`FEATURES`.
        ``features`` (with units), ``versions``, ``created_utc``, ``format``, ``kind``, ``file``,
        ``architecture`` and ``export_check`` are filled in here.
    seed : int
        Seed of the random realistic inputs the export check runs on.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    TypeError
        If ``model`` is not an exportable model.
    ValueError
        If the card is not JSON-serialisable, names unknown features, or a training table lacks its
        sha256; :class:`ArtifactError` if the exported model disagrees with the in-memory one by
        more than 1e-4 K or ``out_dir`` exists and is not an artifact. Nothing is left behind.
    """
    out = Path(out_dir)
    kind = _kind(model)
    n_features = int(model.n_features)
    doc = _jsonable(dict(card))
    doc["features"] = _card_features(card, n_features)
    doc["training_tables"] = _training_tables(doc.get("training_tables"))
    if kind == "torchscript":
        data, info = _export_torch(model, seed)
    elif kind == "forest-json":
        data, info = _export_rf(model, seed)
    else:
        data, info = _export_lgbm(model, seed)
    if not info["max_abs_diff_k"] <= EXPORT_TOLERANCE_K:
        raise ArtifactError(f"{out}: exported model disagrees with the in-memory one by {info['max_abs_diff_k']:.3g} K "
                            f"(> {EXPORT_TOLERANCE_K} K); nothing written")
    config = model.config() if hasattr(model, "config") else {"architecture": type(model).__name__}
    doc.setdefault("model", str(config.get("architecture", type(model).__name__)).lower())
    doc.setdefault("strategy", _default_strategy(info))
    doc.setdefault("stages", [])
    doc.setdefault("metrics", {})
    normalisation = info.pop("normalisation", None)
    doc.update(
        format=ARTIFACT_FORMAT, kind=kind, file=_MODEL_FILES[kind], architecture=_jsonable(config),
        input={"shape": ["n", n_features], "dtype": "float32", "layout": "features in card order, raw units"},
        output={"name": "lst", "unit": "K", "shape": ["n"], "dtype": "float32"},
        export_check={"rows": _CHECK_ROWS, "seed": seed, "tolerance_k": EXPORT_TOLERANCE_K, **info},
        versions=_versions(kind), created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    if normalisation is not None:
        doc["normalisation"] = normalisation
    files = {_MODEL_FILES[kind]: data, _CARD: (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode()}
    _write_atomically(out, files)
    return out


def _write_atomically(out: Path, files: Mapping[str, bytes]) -> None:
    if out.exists() and not _replaceable(out):
        raise ArtifactError(f"{out}: exists and is not an artifact directory; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old: Path | None = None
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        lines = [f"{_sha256(data)}  {name}\n" for name, data in sorted(files.items())]
        (tmp / _SHA).write_text("".join(lines))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _replaceable(out: Path) -> bool:
    if not out.is_dir():
        return False
    names = {p.name for p in out.iterdir()}
    return not names or _SHA in names or _CARD in names


def _read_verified(path: str | Path) -> tuple[Path, dict[str, bytes]]:
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an artifact directory")
    sha_path = root / _SHA
    if not sha_path.is_file():
        raise ArtifactError(f"{sha_path}: missing; the artifact cannot be verified")
    expected: dict[str, str] = {}
    allowed = {_CARD, *_MODEL_FILES.values()}
    for i, line in enumerate(sha_path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        m = _SHA_LINE.match(line)
        if not m:
            raise ArtifactError(f"{sha_path}: line {i} is not '<sha256 hex>  <file name>'")
        digest, name = m.groups()
        if name not in allowed or name in expected:
            raise ArtifactError(f"{sha_path}: line {i} lists {name!r}, which is unknown or repeated")
        expected[name] = digest
    extra = sorted(p.name for p in root.iterdir() if p.name != _SHA and p.name not in expected)
    if extra:
        raise ArtifactError(f"{root / extra[0]}: unexpected file in the artifact (not listed in sha256)")
    models = [n for n in expected if n != _CARD]
    if _CARD not in expected or len(models) != 1:
        raise ArtifactError(f"{sha_path}: must list card.json and exactly one model file")
    files: dict[str, bytes] = {}
    for name, digest in expected.items():
        p = root / name
        if not p.is_file():
            raise ArtifactError(f"{p}: listed in sha256 but missing")
        data = p.read_bytes()
        if _sha256(data) != digest:
            raise ArtifactError(f"{p}: sha256 mismatch (file changed or corrupted)")
        files[name] = data
    return root, files


def _parse_card(root: Path, files: Mapping[str, bytes]) -> dict[str, Any]:
    where = root / _CARD
    try:
        card = json.loads(files[_CARD])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(card, dict) or card.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{where}: not an {ARTIFACT_FORMAT} card")
    kind = card.get("kind")
    if kind not in _MODEL_FILES or _MODEL_FILES[kind] not in files:
        raise ArtifactError(f"{where}: kind {kind!r} does not match the model file in the artifact")
    feats = card.get("features")
    if not isinstance(feats, list) or not feats:
        raise ArtifactError(f"{where}: no features listed")
    for f in feats:
        name = f.get("name") if isinstance(f, dict) else None
        if name not in FEATURE_UNITS or f.get("unit") != FEATURE_UNITS[name]:
            raise ArtifactError(f"{where}: feature {f!r} is not one of this package's features with its unit")
    return card


def verify_artifact(path: str | Path) -> dict[str, Any]:
    """Check an artifact's files and hashes without loading the model; returns its card.

    Raises
    ------
    ArtifactError
        Naming the file that is missing, unexpected, fails its hash, or is malformed.
    """
    root, files = _read_verified(path)
    return _parse_card(root, files)


class LoadedModel:
    """A verified artifact ready for inference: ``predict(X) -> LST (K)``.

    Attributes
    ----------
    path : pathlib.Path
        The artifact directory.
    card : dict
        The parsed ``card.json``.
    kind : str
        ``"torchscript"``, ``"lightgbm-text"`` or ``"forest-json"``.
    model
        The ``torch.jit.ScriptModule``, LightGBM ``Booster`` or :class:`~sftl_dask.models.trees.ForestPredictor`.
    """

    def __init__(self, path: Path, card: dict[str, Any], kind: str, model: Any) -> None:
        self.path = path
        self.card = card
        self.kind = kind
        self.model = model

    @property
    def features(self) -> tuple[str, ...]:
        """Feature names, in the order the model takes them."""
        return tuple(f["name"] for f in self.card["features"])

    @property
    def n_features(self) -> int:
        """Number of features."""
        return len(self.card["features"])

    def predict(self, X: ArrayLike, batch_size: int = 8192) -> NDArray[np.float32]:
        """LST (K), shape ``X.shape[:-1]``, from raw features ``X`` of shape ``(..., n_features)``.

        Raises
        ------
        ValueError
            If the last axis of ``X`` is not ``n_features`` long.
        """
        xa = np.asarray(X, dtype=np.float32)
        if xa.ndim < 1 or xa.shape[-1] != self.n_features:
            raise ValueError(f"{self.path}: model takes {self.n_features} features ({', '.join(self.features)}), "
                             f"got X of shape {xa.shape}")
        if self.kind == "torchscript":
            from sftl_dask.models.trainer import predict_torch

            return predict_torch(self.model, xa, batch_size=batch_size)
        if self.kind == "forest-json":
            return self.model.predict(xa)
        flat = xa.reshape(-1, self.n_features)
        return np.asarray(self.model.predict(flat), dtype=np.float32).reshape(xa.shape[:-1])

    def __repr__(self) -> str:
        return (f"LoadedModel({str(self.path)!r}, model={self.card.get('model')!r}, "
                f"strategy={self.card.get('strategy')!r})")


def load_artifact(path: str | Path, *, device: str = "cpu") -> LoadedModel:
    """Verify an artifact's hashes, then load it (no pickle anywhere).

    Parameters
    ----------
    path : path
        The artifact directory.
    device : str
        Torch device for TorchScript models (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).

    Returns
    -------
    LoadedModel

    Raises
    ------
    ArtifactError
        Naming the file that is missing, unexpected, fails its sha256, or cannot be parsed.
    """
    root, files = _read_verified(path)
    card = _parse_card(root, files)
    kind = card["kind"]
    data = files[_MODEL_FILES[kind]]
    where = root / _MODEL_FILES[kind]
    try:
        if kind == "torchscript":
            import torch

            with _quiet_jit():
                model: Any = torch.jit.load(io.BytesIO(data), map_location=device)
            model.eval()
        elif kind == "lightgbm-text":
            import lightgbm as lgb

            model = lgb.Booster(model_str=data.decode())
        else:
            from sftl_dask.models.trees import ForestPredictor

            model = ForestPredictor(json.loads(data))
    except ArtifactError:
        raise
    except Exception as exc:  # any parser failure is a malformed artifact
        raise ArtifactError(f"{where}: cannot be loaded ({type(exc).__name__}: {exc})") from None
    return LoadedModel(root, card, kind, model)
