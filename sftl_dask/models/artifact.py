"""The model artifact (DESIGN.md, "Model artifact"): export and verified, pickle-free loading.

An artifact is a directory of these files:

- the model: ``model.pt`` (TorchScript; normalisation inside, LoRA merged, adapters kept in the
  graph), ``model.txt`` (LightGBM text model) or ``model.json`` (RF as arrays per tree);
- beside a TorchScript model, ``model.pt2``: the same network as a ``torch.export`` program
  (TorchScript is deprecated from torch 2.9; the program loads without warnings at the same speed).
  It is saved without example inputs, so it holds only JSON and raw tensor bytes, and is checked
  to hold nothing else before ``torch.export.load`` reads it: nothing is unpickled;
- ``card.json``: features in order with units, model, strategy, stages, training tables with their
  sha256, metrics, versions, creation time, how the export was checked and, from ``sftl train``,
  the pre-training range of the inputs and the per-pixel error model (``uncertainty``,
  :mod:`sftl_dask.models.error_model`);
- ``sha256``: ``<hex>  <name>`` for every file above.

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
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sftl_dask.features import FEATURE_UNITS, FEATURES
from sftl_dask.models.error_model import check_error_model
from sftl_dask.models.trees import LGBM, RF, ForestPredictor
from sftl_dask.staging import staged_dir
from sftl_dask.version import __version__

__all__ = [
    "ARTIFACT_FORMAT",
    "PROGRAMS",
    "ArtifactError",
    "LoadedModel",
    "artifact_digest",
    "export_artifact",
    "load_artifact",
    "verify_artifact",
]

#: Format tag written into ``card.json``.
ARTIFACT_FORMAT = "sftl-dask-artifact/1"
#: Largest disagreement allowed between the in-memory and the exported model (K).
EXPORT_TOLERANCE_K = 1e-4

_CARD = "card.json"
_SHA = "sha256"
_MODEL_FILES = {"torchscript": "model.pt", "lightgbm-text": "model.txt", "forest-json": "model.json"}
_EXPORT_FILE = "model.pt2"  # the torch.export program beside a TorchScript model
#: How a torch artifact's network can be loaded: the TorchScript file or the ``torch.export`` program.
PROGRAMS = ("torchscript", "export")
#: Members a pickle-free ``torch.export`` archive may hold (JSON, raw tensor bytes, version stamps).
_PT2_MEMBER = re.compile(
    r"^[^/]+/(models/[\w.-]+\.json|data/(weights|constants)/([\w.-]+_config\.json|weight_\d+|tensor_\d+|constant_\d+)"
    r"|data/sample_inputs/[\w.-]+\.pt|archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id)$")
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
    v = {"sftl_dask": __version__, "numpy": np.__version__, "python": platform.python_version()}
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


def _export_torch(model: Any, seed: int) -> tuple[bytes, dict[str, Any], bytes]:
    import torch

    from sftl_dask.models.finetune import AdapterModule, LoRAConv1d, LoRALinear, merge_and_unload
    from sftl_dask.models.trainer import predict_torch

    reference = copy.deepcopy(model).cpu().eval()
    n_lora = sum(isinstance(m, LoRALinear | LoRAConv1d) for m in reference.modules())
    n_adapters = sum(isinstance(m, AdapterModule) for m in reference.modules())
    export = merge_and_unload(copy.deepcopy(reference)).eval()
    buf = io.BytesIO()
    with _quiet_jit():
        torch.jit.save(torch.jit.script(export), buf)
        reloaded = torch.jit.load(io.BytesIO(buf.getvalue()), map_location="cpu")
    program = _export_program(export)
    # realistic inputs: the pre-training table's feature distribution (mean ± 3 sd, Gaussian)
    norm = getattr(reference, "norm", None)
    rng = np.random.default_rng(seed)
    z = np.clip(rng.standard_normal((_CHECK_ROWS, reference.n_features)), -3, 3)
    if norm is not None:
        x = norm.x_mean.numpy() + norm.x_std.numpy() * z
    else:
        x = z
    x = x.astype(np.float32)
    expected = predict_torch(reference, x)
    diff = _max_diff(expected, predict_torch(reloaded, x))
    diff_program = _max_diff(expected, predict_torch(_load_program(program, Path(_EXPORT_FILE)), x))
    info: dict[str, Any] = {"lora_layers_merged": n_lora, "adapters": n_adapters,
                            "max_abs_diff_k": max(diff, diff_program), "max_abs_diff_k_torchscript": diff,
                            "max_abs_diff_k_export": diff_program}
    if norm is not None:
        info["normalisation"] = {"feature_mean": norm.x_mean.tolist(), "feature_std": norm.x_std.tolist(),
                                 "lst_mean_k": float(norm.y_mean), "lst_std_k": float(norm.y_std)}
    return buf.getvalue(), info, program


def _export_program(model: Any) -> bytes:
    """The network as a ``torch.export`` program (batch dimension dynamic), saved without example inputs."""
    import torch

    x = torch.zeros(64, model.n_features)
    batch = torch.export.Dim("batch", min=1, max=2**26)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    program._example_inputs = None  # the only pickled payload of a plain program: leave it out
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def _check_pt2(data: bytes, where: Path) -> None:
    """Refuse a ``torch.export`` archive holding anything but JSON and raw tensor bytes (nothing to unpickle)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        members = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{where}: not a torch.export archive ({exc})") from None
    for m in members:
        if not _PT2_MEMBER.match(m.filename):
            raise ArtifactError(f"{where}: unexpected member {m.filename!r} (only JSON and raw tensors are accepted)")
        if "/sample_inputs/" in m.filename and m.file_size:
            raise ArtifactError(f"{where}: holds pickled example inputs ({m.filename}); refusing to unpickle")
        if m.filename.endswith("_config.json"):
            try:
                config = json.loads(zf.read(m)).get("config", {})
            except (json.JSONDecodeError, AttributeError) as exc:
                raise ArtifactError(f"{where}: {m.filename} is not a payload config ({exc})") from None
            pickled = [k for k, v in config.items() if not isinstance(v, dict) or v.get("use_pickle") is not False]
            if pickled:
                raise ArtifactError(f"{where}: payload {pickled[0]!r} is pickled; refusing to unpickle")


def _load_program(data: bytes, where: Path, device: str = "cpu") -> Any:
    import torch

    _check_pt2(data, where)
    module = torch.export.load(io.BytesIO(data)).module()
    for p in module.parameters():
        p.requires_grad_(False)
    for m in module.modules():  # traced from the model in eval mode; its module refuses .eval()
        m.training = False
    return module.to(device)


def _export_rf(model: Any, seed: int) -> tuple[bytes, dict[str, Any]]:
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
    extra: dict[str, bytes] = {}
    if kind == "torchscript":
        data, info, extra[_EXPORT_FILE] = _export_torch(model, seed)
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
    if extra:
        doc["programs"] = {"torchscript": _MODEL_FILES[kind], "export": _EXPORT_FILE}
    for key, check in (("uncertainty", _check_uncertainty), ("pretraining_range", _check_range_card)):
        if key in doc:
            check(doc[key], f"export_artifact: card['{key}']")
    files = {_MODEL_FILES[kind]: data, **extra, _CARD: (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode()}
    _write_atomically(out, files)
    return out


def _write_atomically(out: Path, files: Mapping[str, bytes]) -> None:
    if out.exists() and not _replaceable(out):
        raise ArtifactError(f"{out}: exists and is not an artifact directory; refusing to replace it")
    with staged_dir(out) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        lines = [f"{_sha256(data)}  {name}\n" for name, data in sorted(files.items())]
        (tmp / _SHA).write_text("".join(lines))


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
    allowed = {_CARD, _EXPORT_FILE, *_MODEL_FILES.values()}
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
    models = [n for n in expected if n not in (_CARD, _EXPORT_FILE)]
    if _CARD not in expected or len(models) != 1:
        raise ArtifactError(f"{sha_path}: must list card.json and exactly one model file")
    if _EXPORT_FILE in expected and models != [_MODEL_FILES["torchscript"]]:
        raise ArtifactError(f"{sha_path}: {_EXPORT_FILE} belongs beside a TorchScript model.pt only")
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
    for key, check in (("uncertainty", _check_uncertainty), ("pretraining_range", _check_range_card)):
        if key in card:
            try:
                check(card[key], f"{where}: {key}")
            except ValueError as exc:
                raise ArtifactError(str(exc)) from None
    return card


#: Inputs whose pre-training range a card records (``pretraining_range``): name -> unit.
RANGE_INPUTS = {"bt": "K", "wvc": "g cm-2", "vza": "deg", "emis": "1"}


def _check_range_card(value: Any, where: str) -> None:
    if not isinstance(value, Mapping) or set(value) != set(RANGE_INPUTS):
        raise ValueError(f"{where}: must give [min, max] for exactly {', '.join(RANGE_INPUTS)}")
    for k, v in value.items():
        if not (isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(b, int | float) for b in v)
                and math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] <= v[1]):
            raise ValueError(f"{where}: {k} must be [min, max] ({RANGE_INPUTS[k]}), got {v!r}")


def _check_uncertainty(value: Any, where: str) -> None:
    check_error_model(value, where)


#: What the readers raise on a model file that is not what its card says (corrupt, truncated, another format):
#: torch's loaders raise RuntimeError (a bad zip archive, a bad TorchScript or export program) or ValueError,
#: zipfile's BadZipFile, a forest document ValueError (bad JSON too) or KeyError (a missing field). Anything else
#: is a bug and keeps its traceback.
_BAD_MODEL_FILE = (RuntimeError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _load_model(kind: str, name: str, data: bytes, where: Path, device: str) -> Any:
    """The model of a verified artifact's file ``name`` (bytes ``data``, at ``where``), loaded onto ``device``.

    Raises
    ------
    ArtifactError
        If the file cannot be loaded as its kind (its reader's error named).
    """
    try:
        if name == _EXPORT_FILE:
            return _load_program(data, where, device)
        if kind == "torchscript":
            import torch  # lazy: a tree artifact loads without importing torch (~1 s)

            with _quiet_jit():
                model = torch.jit.load(io.BytesIO(data), map_location=device)
            model.eval()
            return model
        if kind == "lightgbm-text":
            import lightgbm as lgb  # lazy, as torch above

            try:
                return lgb.Booster(model_str=data.decode())
            except lgb.basic.LightGBMError as exc:
                raise _cannot_load(where, exc) from None
        return ForestPredictor(json.loads(data))
    except _BAD_MODEL_FILE as exc:
        raise _cannot_load(where, exc) from None


def _cannot_load(where: Path, exc: Exception) -> ArtifactError:
    return ArtifactError(f"{where}: cannot be loaded ({type(exc).__name__}: {exc})")


def artifact_digest(path: str | Path) -> str:
    """sha256 of an artifact's ``sha256`` manifest: one digest that pins every file of the artifact."""
    return _sha256((Path(path) / _SHA).read_bytes())


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
        The ``torch.jit.ScriptModule`` (or the ``torch.export`` program's module), LightGBM ``Booster`` or
        :class:`~sftl_dask.models.trees.ForestPredictor`.
    program : str
        For torch artifacts, which file was loaded: ``"torchscript"`` or ``"export"``.
    """

    def __init__(self, path: Path, card: dict[str, Any], kind: str, model: Any, program: str = "") -> None:
        self.path = path
        self.card = card
        self.kind = kind
        self.model = model
        self.program = program or kind

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


def load_artifact(path: str | Path, *, device: str = "cpu", program: str = "torchscript") -> LoadedModel:
    """Verify an artifact's hashes, then load it (no pickle anywhere).

    Parameters
    ----------
    path : path
        The artifact directory.
    device : str
        Torch device for torch models (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).
    program : {"torchscript", "export"}
        For torch artifacts: load ``model.pt`` (TorchScript) or ``model.pt2`` (``torch.export``).
        Ignored for trees.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ArtifactError
        Naming the file that is missing, unexpected, fails its sha256, or cannot be parsed; or if
        ``program="export"`` and the artifact carries no ``model.pt2``.
    ValueError
        If ``program`` is unknown.
    """
    if program not in PROGRAMS:
        raise ValueError(f"program {program!r} unknown; choose from {', '.join(PROGRAMS)}")
    root, files = _read_verified(path)
    card = _parse_card(root, files)
    kind = card["kind"]
    name = _EXPORT_FILE if kind == "torchscript" and program == "export" else _MODEL_FILES[kind]
    if name not in files:
        raise ArtifactError(f"{root / name}: missing; this artifact carries no torch.export program")
    model = _load_model(kind, name, files[name], root / name, device)
    return LoadedModel(root, card, kind, model, program=program if kind == "torchscript" else kind)
