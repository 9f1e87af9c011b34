"""Pipeline configurations (``pipelines/*.yaml``) as typed models, and the one registry of names.

Every section is a pydantic model: unknown keys and values of the wrong type are refused, and each
default lives here, once. :func:`load_pipeline` reads a YAML file and raises :class:`ConfigError`
naming the file and the key path (``finetune.strategy_typo``) of the first problems found.
The JSON schema of a pipeline is written to ``docs/pipeline.schema.json`` (:func:`write_schema`).

Data sources (``data``), exactly one of:

- ``cube`` + ``insitu`` + ``sites``: a scene cube made by ``sftl ingest``, a folder of station records
  (``<site id>.csv``) and the site table (``id``, ``region``, ``lon``, ``lat``); the matchups are built
  from them (``sftl matchups`` does the same);
- ``matchups``: a matchup table made by ``sftl matchups`` (Parquet);
- ``testbed``: the synthetic world, built under the work folder (``path: null``) or read from a folder
  made by ``sftl testbed``; only the demo, tests and benchmarks use it.

``data.simulation`` names the simulation table (``path``) or how to make it (``profiles``, ``seed``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from sftl_dask.features import FEATURES
from sftl_dask.models import MODELS, STRATEGY_NAMES, TREE_MODELS

__all__ = ["DIRECTIONS", "MODELS", "SCHEDULES", "STRATEGY_NAMES", "TREE_MODELS", "ConfigError", "DataSection",
           "DirectSection", "FinetuneSection", "GridSection", "ModelSection", "PipelineConfig", "PretrainSection",
           "TrainConfig", "TransferSection", "load_config", "load_pipeline", "model_features", "write_schema"]

#: Direction name -> (source region, target region): Si = simulation, Hu = Huailai, He = Heihe.
DIRECTIONS: dict[str, tuple[str, str]] = {"SiHuHe": ("huailai", "heihe"), "SiHeHu": ("heihe", "huailai")}
#: Learning-rate schedules of :func:`sftl_dask.models.trainer.fit_torch`.
SCHEDULES: tuple[str, ...] = ("cosine", "onecycle", "constant")
#: Few-shot adaptation: ``head`` (the head's last linear layer and bias) or ``bias`` (the output offset only).
FEW_SHOT_METHODS: tuple[str, ...] = ("head", "bias")


class ConfigError(ValueError):
    """A pipeline configuration refused: the message names the file and the key path."""


class _Section(BaseModel):
    # strict: "3" is not a number and 1 is not true; extra: a typo is an error, not a silently ignored key
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class SimulationData(_Section):
    """The simulation table: a path (``sftl simulate``), or null to make it under the work folder.

    The other keys say how it is made, as the options of ``sftl simulate`` do (docs/simulation.md): ``profiles``
    generated TIGR-like profiles (null: 946, or none with ``profile_tables``), ``spectra`` spectra of the embedded
    library (null: all, or none with ``spectra_dirs``), users' ``profile_tables`` (CSV/NetCDF) and
    ``spectra_dirs`` (ECOSTRESS/ASTER ``*.spectrum.txt``), a filled ``rt_table`` (``sftl rt-template``), and the
    screens ``screen_max_rh_percent`` and ``screen_lst_minus_tair_k`` ([low, high] K).
    """

    path: str | None = None
    profiles: NonNegativeInt | None = None
    spectra: NonNegativeInt | None = None
    seed: int = 0
    profile_tables: list[str] = []
    spectra_dirs: list[str] = []
    rt_table: str | None = None
    screen_max_rh_percent: PositiveFloat | None = None
    screen_lst_minus_tair_k: list[float] | None = None

    @model_validator(mode="after")
    def _path_or_inputs(self) -> SimulationData:
        made = [k for k in ("profiles", "spectra", "rt_table", "screen_max_rh_percent", "screen_lst_minus_tair_k")
                if getattr(self, k) is not None] + [k for k in ("profile_tables", "spectra_dirs") if getattr(self, k)]
        if self.path is not None and made:
            raise ValueError(f"data.simulation.path names a table already made; {', '.join(made)} say how to make "
                             "one: give one or the other")
        lst = self.screen_lst_minus_tair_k
        if lst is not None and (len(lst) != 2 or not lst[0] < lst[1]):
            raise ValueError(f"data.simulation.screen_lst_minus_tair_k must be [low, high] K, got {lst}")
        return self


class TestbedData(_Section):
    """The synthetic world (testbed): a folder made by ``sftl testbed``, or null to build it."""

    path: str | None = None
    scenes: PositiveInt = 20
    size: PositiveInt = 640
    seed: int = 11
    #: ``delivered``: products as the ground segment delivers them (sensor geometry, RPCs, a DEM), ingested
    #: with the testbed's DEM; ``map``: map-projected products (the first layout). ``sftl testbed --layout``.
    layout: Literal["delivered", "map"] = "delivered"


class DataSection(_Section):
    """Where the training data come from (exactly one source; see the module docstring)."""

    cube: str | None = None
    insitu: str | None = None
    sites: str | None = None
    matchups: str | None = None
    testbed: TestbedData | None = None
    #: Optional pixel truth (CSV: ``scene_id``, ``site``, ``lst_pixel_k``) for scoring; a testbed has its own.
    truth: str | None = None
    simulation: SimulationData = SimulationData()

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        raw = [k for k in ("cube", "insitu", "sites") if getattr(self, k) is not None]
        sources = [s for s, on in (("cube/insitu/sites", raw), ("matchups", self.matchups is not None),
                                   ("testbed", self.testbed is not None)) if on]
        if raw and len(raw) < 3:
            missing = [f"data.{k}" for k in ("cube", "insitu", "sites") if k not in raw]
            raise ValueError(f"{', '.join(missing)} missing: a cube is matched with station records and a site "
                             "table (data.cube, data.insitu, data.sites)")
        if len(sources) != 1:
            raise ValueError("name exactly one data source: data.cube + data.insitu + data.sites, data.matchups, "
                             f"or data.testbed (got {', '.join(sources) or 'none'})")
        return self

    @property
    def source(self) -> str:
        """``"cube"``, ``"matchups"`` or ``"testbed"``."""
        return "cube" if self.cube is not None else "matchups" if self.matchups is not None else "testbed"


class ModelSection(_Section):
    """The model: a name of :data:`MODELS`, its settings, and the features it takes."""

    name: Literal[MODELS]  # type: ignore[valid-type]
    params: dict[str, Any] = {}
    features: list[Literal[FEATURES]] | None = None  # type: ignore[valid-type]
    drop_features: list[Literal[FEATURES]] | None = None  # type: ignore[valid-type]


class PretrainSection(_Section):
    """Stage 1 on the simulation table."""

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 8192
    lr: PositiveFloat = 2e-3
    holdout_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    distributed: bool = False
    schedule: Literal[SCHEDULES] = "cosine"  # type: ignore[valid-type]


class PretrainOverride(_Section):
    """A grid's per-model override of :class:`PretrainSection` (only the keys given)."""

    epochs: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    lr: PositiveFloat | None = None
    schedule: Literal[SCHEDULES] | None = None  # type: ignore[valid-type]


class FinetuneSection(_Section):
    """Stage 2 on the source region's matchups."""

    strategy: Literal[STRATEGY_NAMES]  # type: ignore[valid-type]
    params: dict[str, Any] = {}
    epochs: PositiveInt = 30
    lr: PositiveFloat = 5e-4
    batch_size: PositiveInt = 256
    split: Literal["chronological", "site"] = "chronological"
    test_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    #: Trees: boosting rounds (LGBM) or trees (RF) added on the source matchups.
    n_more: PositiveInt = 100


class TransferSection(_Section):
    """Stage 3: zero-shot on the target region, and few-shot adaptation with k target samples."""

    k: list[PositiveInt] = []
    repeats: PositiveInt = 20
    method: Literal[FEW_SHOT_METHODS] = "head"  # type: ignore[valid-type]


class DirectSection(_Section):
    """The direct-training baseline: hyper-parameters tuned by cross-validation on the source matchups."""

    folds: int = Field(default=3, ge=2)
    #: Search spaces by model name: setting -> candidate values (a model not named: its default space,
    #: :func:`sftl_dask.training.direct.default_search`).
    search: dict[Literal[MODELS], dict[str, list[Any]]] = {}  # type: ignore[valid-type]


class Ablation(_Section):
    drop_features: list[Literal[FEATURES]] = []  # type: ignore[valid-type]
    models: list[Literal[MODELS]] = []  # type: ignore[valid-type]


class GridSection(_Section):
    """The experiment grid (``sftl experiment``): models x strategies x directions x seeds."""

    models: list[Literal[MODELS]] = Field(min_length=1)  # type: ignore[valid-type]
    strategies: list[Literal[STRATEGY_NAMES]] = Field(min_length=1)  # type: ignore[valid-type]
    directions: list[Literal[tuple(DIRECTIONS)]] = Field(min_length=1)  # type: ignore[valid-type]
    seeds: list[int] = Field(min_length=1)
    #: The features ablation (false: none); default drops ``wvc_dbt`` for the first torch model.
    ablation: Ablation | Literal[False] | None = None
    lgbm_dask: bool = True
    params_dnn: dict[str, Any] = {}
    params_trf: dict[str, Any] = {}
    params_cnn: dict[str, Any] = {}
    params_rf: dict[str, Any] = {}
    params_lgbm: dict[str, Any] = {}
    pretrain_dnn: PretrainOverride = PretrainOverride()
    pretrain_trf: PretrainOverride = PretrainOverride()
    pretrain_cnn: PretrainOverride = PretrainOverride()
    pretrain_rf: PretrainOverride = PretrainOverride()
    pretrain_lgbm: PretrainOverride = PretrainOverride()

    @model_validator(mode="after")
    def _ablation_models(self) -> GridSection:
        if isinstance(self.ablation, Ablation):
            stray = [m for m in self.ablation.models if m not in self.models]
            if stray:
                raise ValueError(f"grid.ablation.models must be among grid.models (got {stray})")
        return self

    def resolved_ablation(self) -> dict[str, list[str]]:
        """``drop_features`` and ``models`` of the ablation (empty lists: none)."""
        if self.ablation is False:
            return {"drop_features": [], "models": []}
        if self.ablation is None:
            torch_models = [m for m in self.models if m not in TREE_MODELS]
            return {"drop_features": ["wvc_dbt"] if torch_models else [], "models": torch_models[:1]}
        drop = list(self.ablation.drop_features)
        return {"drop_features": drop, "models": list(self.ablation.models) if drop else []}


class PipelineConfig(_Section):
    """A whole pipeline YAML."""

    name: str
    direction: Literal[tuple(DIRECTIONS)]  # type: ignore[valid-type]
    source_region: str | None = None
    target_region: str | None = None
    seed: int = 0
    data: DataSection
    model: ModelSection
    pretrain: PretrainSection = PretrainSection()
    finetune: FinetuneSection
    transfer: TransferSection = TransferSection()
    direct: DirectSection = DirectSection()
    grid: GridSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _lower_names(cls, raw: Any) -> Any:
        # model and strategy names are case-insensitive, as on the command line
        if isinstance(raw, dict):
            for sect, key in (("model", "name"), ("finetune", "strategy")):
                if isinstance(raw.get(sect), dict) and isinstance(raw[sect].get(key), str):
                    raw[sect] = {**raw[sect], key: raw[sect][key].lower()}
        return raw

    @model_validator(mode="after")
    def _regions(self) -> PipelineConfig:
        src, tgt = DIRECTIONS[self.direction]
        if (self.source_region or src) != src or (self.target_region or tgt) != tgt:
            raise ValueError(f"direction {self.direction} means source_region {src} and target_region {tgt}")
        self.source_region, self.target_region = src, tgt
        return self


_UNION_TAGS = frozenset({"Ablation", "PretrainOverride", "TestbedData", "none", "bool", "int", "str", "dict",
                         "list", "float"})


def _where(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a key path (``finetune.strategy``; list items as ``transfer.k[1]``)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or str(part) in _UNION_TAGS:
            continue  # union members (``literal[False]``, ``Ablation``) are not keys of the file
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(path: Path, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    # of a union's failed members, the first error says what was expected; one line per key path
    seen: dict[str, str] = {}
    for e in errors:
        where = _where(tuple(e["loc"]))
        if e["type"] == "extra_forbidden":
            text = "unknown key"
        elif e["type"] == "missing":
            text = "missing"
        else:
            text = str(e["msg"]).removeprefix("Value error, ")
            if e["type"] not in ("value_error",) and "input" in e:
                text += f" (got {e['input']!r})"
        seen.setdefault(where, text)
    parts = [f"{w}: {t}" if w else t for w, t in seen.items()]
    return f"{path}: " + "; ".join(parts[:4]) + (f"; and {len(parts) - 4} more" if len(parts) > 4 else "")


def load_pipeline(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read and check a pipeline YAML.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ConfigError
        Naming the file and each key path at fault: not YAML, not a mapping, an unknown key (a typo), a
        missing key, a value of the wrong type or out of range, an unknown model, strategy, direction or
        feature, no or several data sources.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_message(path, exc)) from None


def write_schema(path: str | os.PathLike[str]) -> Path:
    """Write the JSON schema of a pipeline YAML (``docs/pipeline.schema.json``) and return its path."""
    path = Path(path)
    path.write_text(json.dumps(PipelineConfig.model_json_schema(), indent=1, sort_keys=True) + "\n")
    return path


@dataclass(frozen=True)
class TrainConfig:
    """A checked pipeline configuration (:class:`PipelineConfig`), sections as dicts with every default filled in
    (the defaults live in the sections above, once)."""

    name: str
    direction: str
    source_region: str
    target_region: str
    seed: int
    data: dict[str, Any]
    model: dict[str, Any]
    pretrain: dict[str, Any]
    finetune: dict[str, Any]
    transfer: dict[str, Any]
    source: str = field(default="config")
    direct: dict[str, Any] = field(default_factory=lambda: {"folds": 3, "search": {}})

    @classmethod
    def from_pipeline(cls, p: PipelineConfig, source: str) -> TrainConfig:
        """The configuration of a checked pipeline read from ``source`` (its path)."""
        d = p.model_dump()
        return cls(name=p.name, direction=p.direction, source_region=str(p.source_region),
                   target_region=str(p.target_region), seed=p.seed, data=d["data"], model=d["model"],
                   pretrain=d["pretrain"], finetune=d["finetune"], transfer=d["transfer"], source=source,
                   direct=d["direct"])


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read and check a pipeline YAML (:func:`load_pipeline`).

    Raises
    ------
    ConfigError
        A ``ValueError`` naming the file and the key path: unknown or missing keys, values of the wrong type,
        unknown model, strategy, direction or feature, no or several data sources.
    FileNotFoundError
        If the file does not exist.
    """
    return TrainConfig.from_pipeline(load_pipeline(path), str(path))


def model_features(cfg: TrainConfig) -> tuple[str, ...]:
    """The features the configuration's model takes, in :data:`~sftl_dask.features.FEATURES` order.

    ``model.features`` lists them (default: all); ``model.drop_features`` removes some (the ablation).
    """
    names = tuple(cfg.model["features"] or FEATURES)
    drop = set(cfg.model["drop_features"] or ())
    return tuple(f for f in FEATURES if f in names and f not in drop)


if __name__ == "__main__":  # pragma: no cover - regenerates the schema in docs/
    print(write_schema(Path(__file__).resolve().parents[2] / "docs" / "pipeline.schema.json"))
