"""LST models: DNN, TrF, CNN (torch), RF, LGBM (trees), fine-tuning strategies, training, artifacts.

Models take the raw feature matrix of :func:`sftl_dask.features.feature_matrix` (never recompute
features) and predict LST in K.

- :func:`build_model` — a model by name;
- :mod:`~sftl_dask.models.finetune` — Full, Head, Gradual, Adapter, LoRA (``make_strategy``);
- :mod:`~sftl_dask.models.trainer` — ``fit_torch``, ``predict_torch``;
- :mod:`~sftl_dask.models.artifact` — ``export_artifact``, ``load_artifact``.

Submodules import torch / LightGBM / scikit-learn lazily: importing this package is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from numpy.typing import ArrayLike

__all__ = ["MODELS", "STRATEGY_NAMES", "TORCH_MODELS", "TREE_MODELS", "build_model"]

#: Torch models: name → (module, class).
TORCH_MODELS: dict[str, tuple[str, str]] = {
    "dnn": ("sftl_dask.models.torch_models", "DNN"),
    "trf": ("sftl_dask.models.torch_models", "TrF"),
    "cnn": ("sftl_dask.models.torch_models", "CNN"),
}
#: Tree models: name → (module, class).
TREE_MODELS: dict[str, tuple[str, str]] = {
    "rf": ("sftl_dask.models.trees", "RF"),
    "lgbm": ("sftl_dask.models.trees", "LGBM"),
}
#: Every model name, in the paper's order.
MODELS: tuple[str, ...] = (*TORCH_MODELS, *TREE_MODELS)
#: Fine-tuning strategy names (classes in :data:`sftl_dask.models.finetune.STRATEGIES`, same order); trees take
#: none of them (continued boosting / added trees).
STRATEGY_NAMES: tuple[str, ...] = ("full", "head", "gradual", "adapter", "lora")


def build_model(name: str, n_features: int, norm_mean: ArrayLike | None = None, norm_std: ArrayLike | None = None,
                **kw: Any) -> Any:
    """A fresh model by name.

    Parameters
    ----------
    name : {"dnn", "trf", "cnn", "rf", "lgbm"}
        Case-insensitive.
    n_features : int
        Number of input features (``len(FEATURES)`` = 12, fewer for an ablation).
    norm_mean, norm_std : array-like of shape (n_features,), optional
        Feature statistics of the pre-training table (feature units); kept inside torch models,
        ignored by trees.
    **kw
        Model settings, e.g. ``target_mean`` / ``target_std`` (K) and ``hidden`` for DNN,
        ``d_model`` for TrF, ``n_estimators`` for trees.

    Raises
    ------
    ValueError
        If the name is unknown (the message lists the valid names) or a setting is invalid.
    TypeError
        If a keyword is not a setting of that model.
    """
    key = str(name).lower()
    spec = TORCH_MODELS.get(key) or TREE_MODELS.get(key)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    cls = getattr(importlib.import_module(spec[0]), spec[1])
    if key in TORCH_MODELS:
        return cls(n_features, norm_mean, norm_std, **kw)
    return cls(n_features, **kw)
