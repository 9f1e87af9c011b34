"""Training tasks: what each model family does in the three stages (torchgeo's ``trainers/base.py`` style).

A :class:`TrainingTask` holds the configuration and answers the template methods the stages call in order:
:meth:`~TrainingTask.configure_model` (a fresh model), :meth:`~TrainingTask.fit` (stage 1 on one process),
:meth:`~TrainingTask.fit_on_cluster` (stage 1 across the Dask workers), :meth:`~TrainingTask.fit_direct`
(a direct-baseline candidate), :meth:`~TrainingTask.finetune` (stage 2) and :meth:`~TrainingTask.export_model`.
:class:`TorchTask` serves DNN, TrF and CNN (fine-tuning strategies, ``fit_torch``, ``torch.distributed``);
:class:`TreeTask` serves RF and LGBM (continued boosting or added trees, ``lightgbm.dask``).
:func:`task_for` picks one by the model's name, so the stages never ask which family they hold.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from sftl_dask.models import TORCH_MODELS, TREE_MODELS, build_model
from sftl_dask.models.finetune import Strategy, make_strategy, trainable_parameters
from sftl_dask.models.trainer import fit_torch, predict_torch
from sftl_dask.training.config import TrainConfig
from sftl_dask.training.direct import FIT_SETTINGS
from sftl_dask.training.distributed import DistributedSettings, pretrain_distributed, read_simulation_on_workers

__all__ = ["Regressor", "TorchTask", "TrainingTask", "TreeTask", "predict", "task_for"]


class Regressor(Protocol):
    """What training needs of a non-torch model (trees, a few-shot offset): predictions in K."""

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def predict(model: Regressor | Any, x: np.ndarray) -> np.ndarray:
    """LST (K) of any model: a torch module through :func:`~sftl_dask.models.trainer.predict_torch`, else
    its ``predict``."""
    return predict_torch(model, x) if isinstance(model, nn.Module) else model.predict(x)


class TrainingTask(ABC):
    """One model family's way through the stages, for one configuration.

    Parameters
    ----------
    cfg : TrainConfig
        The checked configuration (its ``model``, ``pretrain`` and ``finetune`` sections are read here).
    threads : int, optional
        torch threads of the training loops (default: torch's).
    """

    def __init__(self, cfg: TrainConfig, threads: int | None = None) -> None:
        self.cfg = cfg
        self.threads = threads
        self.name = str(cfg.model["name"])

    @property
    @abstractmethod
    def strategy_name(self) -> str:
        """The fine-tuning strategy's name, as results and the model card report it."""

    @abstractmethod
    def configure_model(self, x: np.ndarray, y: np.ndarray, params: Mapping[str, Any] | None = None) -> Any:
        """A fresh model of the configuration for features ``x`` and LST ``y`` (K); ``params`` override the
        configuration's model settings."""

    @abstractmethod
    def fit(self, model: Any, x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray]) -> None:
        """Stage 1 on this process: train ``model`` in place on simulated rows, ``val`` the held-out ones."""

    def distributes(self, client: Any) -> bool:
        """Whether stage 1 runs across the workers of ``client`` (``pretrain.distributed``)."""
        return client is not None and bool(self.cfg.pretrain["distributed"])

    @abstractmethod
    def fit_on_cluster(self, sim: Any, held: Sequence[int], client: Any, x_val: np.ndarray,
                       y_val: np.ndarray) -> Any:
        """Stage 1 across the workers of ``client``, which read the simulation table ``sim`` themselves;
        ``held`` are the held-out profiles (``x_val``, ``y_val`` their rows). Returns the trained model."""

    @abstractmethod
    def fit_direct(self, settings: Mapping[str, Any], x: np.ndarray, y: np.ndarray) -> Any:
        """A direct-baseline candidate: a fresh model with ``settings`` trained on source rows only."""

    @abstractmethod
    def finetune(self, model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        """Stage 2: a fine-tuned copy of the pre-trained ``model`` (left as it is) on the source matchups."""

    @abstractmethod
    def trainable_parameters(self, tuned: Any) -> int:
        """What stage 2 trained: parameters (torch) or trees (trees)."""

    def export_model(self, tuned: Any) -> Any:
        """The fine-tuned model as it is exported (the artifact)."""
        return tuned


class TorchTask(TrainingTask):
    """DNN, TrF and CNN: AdamW loops (:func:`~sftl_dask.models.trainer.fit_torch`), a fine-tuning strategy
    (:func:`~sftl_dask.models.finetune.make_strategy`), data-parallel stage 1 with ``torch.distributed``."""

    def __init__(self, cfg: TrainConfig, threads: int | None = None) -> None:
        super().__init__(cfg, threads)
        self.strategy: Strategy | None = None  # set by finetune

    @property
    def strategy_name(self) -> str:
        return str(self.cfg.finetune["strategy"])

    def configure_model(self, x: np.ndarray, y: np.ndarray, params: Mapping[str, Any] | None = None) -> Any:
        """The model carries the normalisation of ``x`` (feature units) and ``y`` (K)."""
        kw = {**self.cfg.model["params"], **(params or {})}
        return build_model(self.name, x.shape[1], x.mean(axis=0), x.std(axis=0) + 1e-6,
                           target_mean=float(y.mean()), target_std=float(y.std()), **kw)

    def fit(self, model: Any, x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray]) -> None:
        pt = self.cfg.pretrain
        fit_torch(model, x, y, epochs=pt["epochs"], batch_size=pt["batch_size"], lr=pt["lr"], val=val,
                  seed=self.cfg.seed, threads=self.threads, schedule=pt["schedule"])

    def fit_on_cluster(self, sim: Any, held: Sequence[int], client: Any, x_val: np.ndarray,
                       y_val: np.ndarray) -> Any:
        """The ranks reduce the normalisation statistics (:func:`~.distributed.pretrain_distributed`)."""
        pt = self.cfg.pretrain
        settings = DistributedSettings(self.name, model_params=dict(self.cfg.model["params"]), epochs=pt["epochs"],
                                       batch_size=pt["batch_size"], lr=pt["lr"], holdout_profiles=tuple(held),
                                       seed=self.cfg.seed, schedule=pt["schedule"])
        model, _ = pretrain_distributed(settings, sim, client=client)
        return model

    def fit_direct(self, settings: Mapping[str, Any], x: np.ndarray, y: np.ndarray) -> Any:
        """Training settings (:data:`~sftl_dask.training.direct.FIT_SETTINGS`) go to the loop, the rest to the
        model; its initial weights come from the configuration's seed, whatever the process drew before."""
        fit_kw = {k: v for k, v in settings.items() if k in FIT_SETTINGS}
        params = {k: v for k, v in settings.items() if k not in fit_kw}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            model = self.configure_model(x, y, params)
        fit_torch(model, x, y, seed=self.cfg.seed, threads=self.threads, patience=None, **fit_kw)
        return model

    def finetune(self, model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        """The configuration's strategy (``finetune.strategy`` with ``finetune.params``), kept for the export."""
        ft = self.cfg.finetune
        tuned = copy.deepcopy(model)
        self.strategy = make_strategy(self.strategy_name, **ft["params"])
        tuned = self.strategy.apply(tuned)
        fit_torch(tuned, x, y, strategy=self.strategy, epochs=ft["epochs"], batch_size=ft["batch_size"],
                  lr=ft["lr"], seed=self.cfg.seed, threads=self.threads)
        return tuned

    def trainable_parameters(self, tuned: Any) -> int:
        return trainable_parameters(tuned)

    def export_model(self, tuned: Any) -> Any:
        """LoRA factors merged into their layers (the strategy's ``export_model``); others as they are."""
        return getattr(self.strategy, "export_model", lambda m: m)(tuned)


class TreeTask(TrainingTask):
    """RF and LGBM: "fine-tuned" by continued boosting (LGBM) or added trees (RF) whatever the strategy name;
    LGBM's stage 1 can run across the workers with ``lightgbm.dask``."""

    @property
    def strategy_name(self) -> str:
        return "continued_boosting" if self.name == "lgbm" else "added_trees"

    def configure_model(self, x: np.ndarray, y: np.ndarray, params: Mapping[str, Any] | None = None) -> Any:
        """Trees take no statistics of the data."""
        return build_model(self.name, x.shape[1], **{**self.cfg.model["params"], **(params or {})})

    def fit(self, model: Any, x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray]) -> None:
        model.fit(x, y, val=val)

    def distributes(self, client: Any) -> bool:
        """LGBM always trains across the workers when there is a client."""
        return client is not None and (self.name == "lgbm" or bool(self.cfg.pretrain["distributed"]))

    def fit_on_cluster(self, sim: Any, held: Sequence[int], client: Any, x_val: np.ndarray,
                       y_val: np.ndarray) -> Any:
        """The workers read the training rows (:func:`~sftl_dask.training.distributed.read_simulation_on_workers`).

        Raises
        ------
        ValueError
            For RF: only LGBM and the torch models train across the workers.
        """
        if self.name != "lgbm":
            raise ValueError(f"pretrain_distributed: model {self.name!r} is not a torch model; choose from "
                             f"{', '.join(TORCH_MODELS)}")
        model = self.configure_model(x_val, y_val)
        model.fit_dask(read_simulation_on_workers(sim, client=client, holdout_profiles=held), client=client)
        return model

    def fit_direct(self, settings: Mapping[str, Any], x: np.ndarray, y: np.ndarray) -> Any:
        model = self.configure_model(x, y, settings)
        model.fit(x, y)
        return model

    def finetune(self, model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        """``finetune.n_more`` rounds of boosting (LGBM) or trees (RF) on the source matchups."""
        tuned = copy.deepcopy(model)
        tuned.finetune(x, y, n_more=self.cfg.finetune["n_more"])
        return tuned

    def trainable_parameters(self, tuned: Any) -> int:
        return int(tuned.n_trees)


def task_for(cfg: TrainConfig, threads: int | None = None) -> TrainingTask:
    """The task of the configuration's model: :class:`TreeTask` for RF and LGBM, else :class:`TorchTask`."""
    return TreeTask(cfg, threads) if str(cfg.model["name"]) in TREE_MODELS else TorchTask(cfg, threads)
