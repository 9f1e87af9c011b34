"""Model artifact: export/load equivalence, card contents, hash checking, no pickle, atomic writes."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import put_pickle_in_program, synthetic_lst

from sftl_dask.features import FEATURE_UNITS, FEATURES
from sftl_dask.models import build_model
from sftl_dask.models.artifact import ArtifactError, export_artifact, load_artifact, verify_artifact
from sftl_dask.models.finetune import LoRALinear, make_strategy
from sftl_dask.models.trainer import fit_torch, predict_torch
from sftl_dask.models.trees import LGBM, RF

TORCH = ("dnn", "trf", "cnn")
_synthetic = synthetic_lst

X, Y = _synthetic(800)
X_FT, Y_FT = _synthetic(200, seed=1, bias_k=2.5)
CARD = {
    "model": "dnn", "strategy": "full", "stages": ["pretrain: simulation", "finetune: huailai matchups (full)"],
    "training_tables": {"simulation": {"path": "sim.parquet", "sha256": hashlib.sha256(b"sim").hexdigest()}},
    "metrics": {"stage1_holdout_sim": {"rmse_k": np.float32(0.4), "n": np.int64(80)}},
}


def _trained(name: str, strategy: str | None = None):
    torch.manual_seed(0)
    m = build_model(name, 12, X.mean(axis=0), X.std(axis=0), target_mean=float(Y.mean()), target_std=float(Y.std()))
    fit_torch(m, X, Y, epochs=3, batch_size=128, lr=3e-3, seed=0)
    if strategy is not None:
        strat = make_strategy(strategy)
        m = strat.apply(m)
        fit_torch(m, X_FT, Y_FT, strategy=strat, epochs=3, batch_size=64, lr=1e-2, seed=0)
    return m


def _realistic(n: int = 2000) -> np.ndarray:
    return _synthetic(n, seed=42)[0]


@pytest.fixture(scope="module")
def dnn_artifact(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    m = _trained("dnn")
    return export_artifact(m, tmp_path_factory.mktemp("art") / "dnn", CARD), m


# The default run covers each architecture once and each strategy once (dnn full, trf LoRA, cnn adapter, dnn
# gradual); the other six pairs (the same export code on other layer stacks) run under -m slow (~150 s together).
_FAST_EXPORTS = {("dnn", None), ("trf", "lora"), ("cnn", "adapter"), ("dnn", "gradual")}


@pytest.mark.parametrize(("name", "strategy"), [
    pytest.param(n, s, marks=() if (n, s) in _FAST_EXPORTS else pytest.mark.slow)
    for n, s in [(n, None) for n in TORCH] + [(n, "lora") for n in TORCH] + [(n, "adapter") for n in TORCH]
    + [("dnn", "gradual")]])
def test_exported_model_agrees_with_in_memory_model(tmp_path, name, strategy):
    m = _trained(name, strategy)
    path = export_artifact(m, tmp_path / "a", {**CARD, "model": name, "strategy": strategy or "full"})
    loaded = load_artifact(path)
    program = load_artifact(path, program="export")
    x = _realistic()
    diff = np.abs(loaded.predict(x) - predict_torch(m, x)).max()
    assert diff <= 1e-4
    assert np.abs(program.predict(x) - loaded.predict(x)).max() <= 1e-4  # both load paths agree
    assert program.program == "export" and loaded.program == "torchscript"
    assert loaded.card["export_check"]["max_abs_diff_k"] <= 1e-4
    assert loaded.card["export_check"]["max_abs_diff_k_export"] <= 1e-4
    if strategy == "lora":
        assert loaded.card["export_check"]["lora_layers_merged"] > 0
        assert any(isinstance(mod, LoRALinear) for mod in m.modules())  # the in-memory model is not merged
        assert not any("lora" in n for n, _ in loaded.model.named_parameters())
    if strategy == "adapter":
        assert any("adapter" in n for n, _ in loaded.model.named_parameters())


def test_card_has_features_units_tables_versions_and_times(dnn_artifact):
    path, _ = dnn_artifact
    card = json.loads((path / "card.json").read_text())
    assert [f["name"] for f in card["features"]] == list(FEATURES)
    assert all(f["unit"] == FEATURE_UNITS[f["name"]] for f in card["features"])
    assert card["model"] == "dnn" and card["strategy"] == "full"
    assert card["stages"] == CARD["stages"]
    assert card["training_tables"]["simulation"]["sha256"] == hashlib.sha256(b"sim").hexdigest()
    assert card["metrics"]["stage1_holdout_sim"] == {"rmse_k": pytest.approx(0.4), "n": 80}
    assert {"torch", "numpy", "sftl_dask"} <= set(card["versions"])
    assert card["created_utc"].endswith("Z")
    assert card["kind"] == "torchscript" and card["file"] == "model.pt"
    assert card["output"]["unit"] == "K"
    assert len(card["normalisation"]["feature_mean"]) == 12


def test_sha256_file_lists_every_file(dnn_artifact):
    path, _ = dnn_artifact
    assert sorted(p.name for p in path.iterdir()) == ["card.json", "model.pt", "model.pt2", "sha256"]
    lines = (path / "sha256").read_text().splitlines()
    listed = {line.split("  ")[1]: line.split("  ")[0] for line in lines}
    assert set(listed) == {"card.json", "model.pt", "model.pt2"}
    for name, digest in listed.items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest
    assert verify_artifact(path)["model"] == "dnn"


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize("name", ["model.pt", "model.pt2", "card.json"])
def test_tampered_file_is_refused_naming_it(dnn_artifact, tmp_path, name):
    path = _copy(dnn_artifact[0], tmp_path / "t")
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=re.escape(f"{name}: sha256 mismatch")):
        load_artifact(path)


def test_missing_or_extra_files_are_refused(dnn_artifact, tmp_path):
    path = _copy(dnn_artifact[0], tmp_path / "m")
    (path / "sha256").unlink()
    with pytest.raises(ArtifactError, match="sha256: missing"):
        load_artifact(path)
    path = _copy(dnn_artifact[0], tmp_path / "n")
    (path / "model.pt").unlink()
    with pytest.raises(ArtifactError, match=r"model\.pt: listed in sha256 but missing"):
        load_artifact(path)
    path = _copy(dnn_artifact[0], tmp_path / "e")
    (path / "notes.pkl").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"notes\.pkl: unexpected file"):
        load_artifact(path)
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        load_artifact(tmp_path / "nowhere")


def test_rehashed_but_invalid_card_is_refused(dnn_artifact, tmp_path):
    path = _copy(dnn_artifact[0], tmp_path / "c")
    card = json.loads((path / "card.json").read_text())
    card["features"][5]["unit"] = "kg m-2"
    data = json.dumps(card).encode()
    (path / "card.json").write_bytes(data)
    _rehash(path)
    with pytest.raises(ArtifactError, match=r"card\.json: feature"):
        load_artifact(path)


def _rehash(path: Path) -> None:
    names = sorted(p.name for p in path.iterdir() if p.name != "sha256")
    lines = [f"{hashlib.sha256((path / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (path / "sha256").write_text("\n".join(lines) + "\n")


def test_loading_never_unpickles(dnn_artifact, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle/torch.load used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    path, model = dnn_artifact
    x = _realistic(100)
    for program in ("torchscript", "export"):
        loaded = load_artifact(path, program=program)
        assert np.abs(loaded.predict(x) - predict_torch(model, x)).max() <= 1e-4


def test_export_program_holding_a_pickle_is_refused_before_loading(dnn_artifact, tmp_path, monkeypatch):

    path = _copy(dnn_artifact[0], tmp_path / "p")
    put_pickle_in_program(path)
    _rehash(path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("torch.load used")))
    with pytest.raises(ArtifactError, match=r"model\.pt2: holds pickled example inputs"):
        load_artifact(path, program="export")
    assert load_artifact(path).program == "torchscript"  # the TorchScript file is untouched


def test_tree_artifact_has_no_export_program(tmp_path):
    m = LGBM(n_estimators=5)
    m.fit(X, Y)
    path = export_artifact(m, tmp_path / "l", {**CARD, "model": "lgbm"})
    assert not (path / "model.pt2").exists() and "programs" not in verify_artifact(path)
    assert load_artifact(path, program="export").program == "lightgbm-text"  # the choice concerns torch only


def test_loaded_model_checks_feature_width_and_keeps_leading_shape(dnn_artifact):
    loaded = load_artifact(dnn_artifact[0])
    assert loaded.features == FEATURES
    with pytest.raises(ValueError, match="12 features"):
        loaded.predict(np.zeros((4, 11), np.float32))
    assert loaded.predict(_realistic(100).reshape(4, 25, 12)).shape == (4, 25)


def test_export_replaces_an_artifact_atomically_but_never_other_directories(dnn_artifact, tmp_path):
    _, model = dnn_artifact
    out = tmp_path / "art"
    export_artifact(model, out, CARD)
    first = (out / "card.json").read_text()
    export_artifact(model, out, {**CARD, "metrics": {"note": "second"}})
    assert (out / "card.json").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporaries left behind
    other = tmp_path / "data"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        export_artifact(model, other, CARD)
    assert (other / "keep.txt").read_text() == "precious"


def test_export_validates_the_card(tmp_path):
    model = _trained("dnn")
    with pytest.raises(ValueError, match="sha256"):
        export_artifact(model, tmp_path / "a", {**CARD, "training_tables": {"sim": {"path": "x"}}})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        export_artifact(model, tmp_path / "b", {**CARD, "metrics": {"bad": object()}})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_ablation_model_lists_its_features(tmp_path):
    keep = [i for i, f in enumerate(FEATURES) if f != "wvc_dbt"]
    x = X[:, keep]
    m = build_model("dnn", 11, x.mean(axis=0), x.std(axis=0), target_mean=float(Y.mean()), target_std=1.0)
    with pytest.raises(ValueError, match="list them"):
        export_artifact(m, tmp_path / "a", CARD)
    path = export_artifact(m, tmp_path / "a", {**CARD, "features": [FEATURES[i] for i in keep]})
    loaded = load_artifact(path)
    assert "wvc_dbt" not in loaded.features and loaded.n_features == 11
    assert np.abs(loaded.predict(x) - predict_torch(m, x)).max() <= 1e-4


@pytest.mark.parametrize("cls", [RF, LGBM])
def test_tree_artifacts_round_trip(tmp_path, cls):
    model = cls(12, n_estimators=30, seed=0)
    model.fit(X, Y)
    model.finetune(X_FT, Y_FT, n_more=10)
    path = export_artifact(model, tmp_path / "t", {**CARD, "model": cls.kind, "strategy": "continued"})
    expected_file = "model.json" if cls is RF else "model.txt"
    assert sorted(p.name for p in path.iterdir()) == sorted(["card.json", expected_file, "sha256"])
    assert b"pickle" not in (path / expected_file).read_bytes()[:100]
    loaded = load_artifact(path)
    x = _realistic()
    if cls is RF:
        assert np.array_equal(loaded.predict(x), model.estimator.predict(x).astype(np.float32))
        assert loaded.model.n_trees == 40
    else:
        assert np.abs(loaded.predict(x) - model.predict(x)).max() <= 1e-4
        assert loaded.model.current_iteration() == 40
    # tampering is caught for trees too
    data = bytearray((path / expected_file).read_bytes())
    data[-10] ^= 0x01
    (path / expected_file).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=re.escape(expected_file)):
        load_artifact(path)


def test_export_does_not_change_the_in_memory_model(tmp_path):
    m = _trained("trf", "lora")
    state = copy.deepcopy(m.state_dict())
    export_artifact(m, tmp_path / "a", CARD)
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert any(isinstance(mod, LoRALinear) for mod in m.modules())
