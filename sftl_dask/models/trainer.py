"""Training and batched inference for the torch LST models.

:func:`fit_torch` is the one training loop for pre-training, fine-tuning (with a strategy from
:mod:`sftl_dask.models.finetune`) and few-shot adaptation: AdamW, a per-step cosine or one-cycle
learning-rate schedule, loss in standardised target units, early stopping on validation RMSE with
the best state restored, deterministic for a given seed and thread count.

:func:`predict_torch` runs inference in cache-sized batches (≈ 8k rows; batches larger than the
CPU cache are ~3× slower, see ``reference/PERF.md``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import nn

from sftl_dask.metrics import rmse
from sftl_dask.models.finetune import Strategy, trainable_parameters

__all__ = ["SCHEDULES", "as_xy", "fit_torch", "lr_factor", "predict_torch", "torch_threads", "train_step"]

#: Learning-rate schedules (per optimiser step).
SCHEDULES = ("cosine", "onecycle", "constant")

_ONECYCLE_WARMUP = 0.3  # fraction of the steps spent warming up
_ONECYCLE_START = 0.04  # start and floor of one-cycle, as a fraction of the peak lr
_COSINE_FLOOR = 0.01  # end of the cosine schedule, as a fraction of the initial lr


def lr_factor(schedule: str, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of optimiser step ``step`` (0-based) under ``schedule`` over ``total_steps`` steps.

    For ``torch.optim.lr_scheduler.LambdaLR``: ``cosine`` decays from 1 to 0.01, ``onecycle`` warms up from
    0.04 to 1 over the first 30 % of the steps then decays to 0.001, ``constant`` stays at 1.
    """
    def cosine(step: int) -> float:
        t = min(step / max(total_steps, 1), 1.0)
        return _COSINE_FLOOR + (1.0 - _COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t))

    def onecycle(step: int) -> float:
        warm = max(1, int(_ONECYCLE_WARMUP * total_steps))
        if step < warm:
            return _ONECYCLE_START + (1.0 - _ONECYCLE_START) * step / warm
        t = min((step - warm) / max(total_steps - warm, 1), 1.0)
        return 1e-3 + (1.0 - 1e-3) * 0.5 * (1.0 + math.cos(math.pi * t))

    return {"cosine": cosine, "onecycle": onecycle, "constant": lambda step: 1.0}[schedule]


def as_xy(name: str, x: ArrayLike, y: ArrayLike, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (n, ``n_features``) and LST (K) as float32 tensors, checked.

    Raises
    ------
    ValueError
        Naming ``name``: a shape mismatch, no rows, or non-finite features or targets (counted).
    """
    xa = np.ascontiguousarray(x, dtype=np.float32)
    ya = np.ascontiguousarray(y, dtype=np.float32).reshape(-1)
    if xa.ndim != 2 or xa.shape[1] != n_features:
        raise ValueError(f"{name}: X must have shape (n, {n_features}), got {xa.shape}")
    if ya.shape[0] != xa.shape[0]:
        raise ValueError(f"{name}: X has {xa.shape[0]} rows but y has {ya.shape[0]}")
    if xa.shape[0] == 0:
        raise ValueError(f"{name}: no rows")
    bad_x, bad_y = int((~np.isfinite(xa)).sum()), int((~np.isfinite(ya)).sum())
    if bad_x or bad_y:
        raise ValueError(f"{name}: {bad_x} non-finite feature value(s) and {bad_y} non-finite target(s)")
    return torch.from_numpy(xa), torch.from_numpy(ya)


def _n_features(model: nn.Module) -> int:
    n = getattr(model, "n_features", None)
    if n is None:
        raise TypeError(f"{type(model).__name__} has no n_features: not an LST model")
    return int(n)


def train_step(model: nn.Module, crit: nn.Module, opt: torch.optim.Optimizer,
                sched: torch.optim.lr_scheduler.LRScheduler, xb: torch.Tensor, yb: torch.Tensor,
                y_scale: float) -> torch.Tensor:
    """One optimiser and schedule step on a batch, the loss on the standardised target.

    ``model`` may be a ``DistributedDataParallel`` wrapper (its backward averages the gradients);
    ``yb`` is LST (K) and ``y_scale`` the target standard deviation (K). Returns the batch's
    predictions (K), detached.
    """
    pred = model(xb)
    loss = crit(pred / y_scale, yb / y_scale)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return pred.detach()


def fit_torch(
    model: nn.Module,
    X: ArrayLike,
    y: ArrayLike,
    *,
    strategy: Strategy | None = None,
    epochs: int = 20,
    batch_size: int = 8192,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    val: tuple[ArrayLike, ArrayLike] | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    schedule: str = "cosine",
    patience: int | None = 10,
    loss: str = "mse",
) -> dict[str, Any]:
    """Train ``model`` in place on raw features ``X`` against LST ``y``.

    Parameters
    ----------
    model : torch.nn.Module
        An LST model (``Normalize → core → de-normalise``), ``strategy.apply``-ed if a ``strategy`` is given.
    X, y : array-like of shape (n, n_features) and (n,)
        Raw features (:func:`~sftl_dask.features.feature_matrix`, feature units, float32); target LST (K).
    strategy : Strategy, optional
        Gives the parameter groups (discriminative learning rates) and the per-epoch ``step``
        (Gradual). Without one, every parameter with ``requires_grad`` trains at ``lr``.
    epochs, batch_size : int
        Maximum epochs; rows per optimiser step.
    lr, weight_decay : float
        Peak learning rate (the head's, for Gradual); AdamW decoupled weight decay.
    val : (X_val, y_val), optional
        Validation set: its RMSE (K) is computed every epoch; training stops after ``patience``
        epochs without improvement and the best state is restored.
    seed : int
        Seeds shuffling, dropout and any random initialisation inside; the global torch RNG is
        restored afterwards.
    threads : int, optional
        ``torch.set_num_threads`` for the duration of the call (set it to the Dask worker's thread
        count: oversubscription costs ~3×); restored afterwards.
    progress : callable, optional
        Called after each epoch with that epoch's log dict.
    schedule : {"cosine", "onecycle", "constant"}
        Per-step learning-rate schedule (multiplies each group's learning rate).
    patience : int or None
        Early-stopping patience in epochs (``None``: never stop early; best state still restored).
    loss : {"mse", "huber"}
        Loss on the standardised target (Huber with delta 1 standard deviation).

    Returns
    -------
    dict
        ``epoch``, ``train_rmse_k``, ``val_rmse_k`` (per-epoch lists), ``lr`` (head learning rate at
        the end of each epoch), ``best_epoch``, ``best_val_rmse_k``, ``stopped_early``,
        ``trainable_parameters``, ``n_train``, ``seconds``.

    Raises
    ------
    ValueError
        On shape mismatches, non-finite inputs, an unknown schedule or loss, or bad settings.

    Notes
    -----
    Memory: ``X`` is copied once to a float32 tensor (``n × n_features × 4`` bytes); batches are gathered from it.
    """
    _check_fit_settings(schedule, loss, epochs, batch_size, lr, weight_decay)
    n_feat = _n_features(model)
    xt, yt = as_xy("fit_torch", X, y, n_feat)
    xv, yv = as_xy("fit_torch val", val[0], val[1], n_feat) if val is not None else (None, None)
    y_scale = float(model.norm.y_std) if hasattr(model, "norm") else 1.0

    t0 = time.perf_counter()
    with torch_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _fit_loop(model, xt, yt, xv, yv, strategy=strategy, epochs=epochs, batch_size=batch_size,
                         lr=lr, weight_decay=weight_decay, seed=seed, progress=progress, schedule=schedule,
                         patience=patience, loss=loss, y_scale=y_scale, t0=t0)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (unchanged when None or 0), restored afterwards."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _check_fit_settings(schedule: str, loss: str, epochs: int, batch_size: int, lr: float,
                        weight_decay: float) -> None:
    """Refuse an unknown schedule or loss, or a setting out of range (:func:`fit_torch`'s ``ValueError``)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"fit_torch: schedule {schedule!r} unknown; choose from {', '.join(SCHEDULES)}")
    if loss not in ("mse", "huber"):
        raise ValueError(f"fit_torch: loss {loss!r} unknown; choose from mse, huber")
    if epochs < 1 or batch_size < 1 or not lr > 0 or weight_decay < 0:
        raise ValueError(f"fit_torch: need epochs >= 1, batch_size >= 1, lr > 0, weight_decay >= 0; got "
                         f"{epochs}, {batch_size}, {lr}, {weight_decay}")


def _fit_loop(model: nn.Module, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor | None,
              yv: torch.Tensor | None, *, strategy: Strategy | None, epochs: int, batch_size: int, lr: float,
              weight_decay: float, seed: int, progress: Callable[[dict[str, Any]], None] | None, schedule: str,
              patience: int | None, loss: str, y_scale: float, t0: float) -> dict[str, Any]:
    device = next(model.parameters()).device
    groups = (strategy or Strategy()).param_groups(model, lr)
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise ValueError(f"fit_torch: {type(model).__name__} has no trainable parameters")
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    n = xt.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(schedule, epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(seed)
    crit = nn.MSELoss() if loss == "mse" else nn.HuberLoss(delta=1.0)

    hist: dict[str, Any] = {"epoch": [], "train_rmse_k": [], "val_rmse_k": [], "lr": []}
    best_val, best_epoch, best_state, bad = math.inf, -1, None, 0
    stopped = False
    for epoch in range(epochs):
        if strategy is not None:
            strategy.step(epoch)
        model.train()
        sq_sum = 0.0
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            pred = train_step(model, crit, opt, sched, xb, yb, y_scale)
            sq_sum += float(((pred - yb) ** 2).sum())
        log: dict[str, Any] = {"epoch": epoch, "train_rmse_k": math.sqrt(sq_sum / n),
                               "lr": opt.param_groups[-1]["lr"]}
        if xv is not None and yv is not None:
            log["val_rmse_k"] = rmse(predict_torch(model, xv.numpy(), batch_size=max(batch_size, 8192)), yv.numpy())
            if log["val_rmse_k"] < best_val:
                best_val, best_epoch, bad = log["val_rmse_k"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        for k in ("epoch", "train_rmse_k", "lr"):
            hist[k].append(log[k])
        hist["val_rmse_k"].append(log.get("val_rmse_k"))
        if progress is not None:
            progress(log)
        if patience is not None and xv is not None and bad >= patience:
            stopped = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    hist.update(best_epoch=best_epoch if xv is not None else epoch, best_val_rmse_k=None if xv is None else best_val,
                stopped_early=stopped, trainable_parameters=trainable_parameters(model), n_train=n,
                seconds=round(time.perf_counter() - t0, 3))
    return hist


def predict_torch(model: nn.Module, X: ArrayLike, batch_size: int = 8192) -> NDArray[np.float32]:
    """LST (K) predicted by a torch model (eager or TorchScript) from raw features.

    Parameters
    ----------
    model : torch.nn.Module or torch.jit.ScriptModule
    X : array-like of shape (..., n_features)
        Raw features (feature units).
    batch_size : int
        Rows per forward pass; ≈ 8k keeps activations in cache.

    Returns
    -------
    numpy.ndarray of float32, shape ``X.shape[:-1]``
        LST (K). Rows with non-finite features give NaN.
    """
    xa = np.asarray(X, dtype=np.float32)
    if xa.ndim < 1:
        raise ValueError("predict_torch: X must have a feature axis")
    lead = xa.shape[:-1]
    flat = np.ascontiguousarray(xa.reshape(-1, xa.shape[-1]))
    out = np.empty(flat.shape[0], dtype=np.float32)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training  # a torch.export program's module is traced in eval mode and cannot switch
    if was_training:
        model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, flat.shape[0], batch_size):
                xb = torch.from_numpy(flat[start:start + batch_size]).to(device)
                out[start:start + batch_size] = model(xb).float().cpu().numpy()
    finally:
        if was_training:
            model.train(True)
    return out.reshape(lead)
