"""Few-shot adaptation on k target samples that stays near the transferred model.

With 5-20 samples, gradient fine-tuning of a network (even of its head) overfits: measured on the
testbed, every torch model got worse at k = 5 than left alone. Here the adaptation is the smallest
one that can help, regularised toward the transferred weights and chosen by leave-one-out on the k
samples themselves:

- ``bias``: an offset added to the output (the final layer's bias of a network);
- ``head``: the final linear layer of the head (its weights and bias) on the features it receives.

Either update is a ridge regression of the transferred model's residuals pulled to zero change (an L2
pull to the transferred weights; gradient descent from those weights stopped early behaves the same
way), solved in closed form. The penalty is chosen from a grid by the leave-one-out error, which is
exact and cheap for ridge (the hat-matrix identity), with a standard-error rule: the smallest change
(``none`` first, then ``bias``, then ``head``; larger penalties first) whose leave-one-out error is within
:data:`STANDARD_ERRORS` standard errors of the best candidate's. Trees take the ``bias`` update, and so does
every model below :data:`HEAD_MIN_SAMPLES` samples.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["HEAD_MIN_SAMPLES", "PENALTIES", "STANDARD_ERRORS", "adapt_few_shot", "ridge_loo"]

#: How many standard errors of the best candidate's leave-one-out error a smaller change may lose and still be
#: kept. Target residuals are heavy-tailed (one station at -10 K among 43): with 1 standard error, one draw of 5
#: samples in 20 bought a bias that cost 0.84 K on the testbed's SiHuHe; 2 is the conservative choice.
STANDARD_ERRORS = 2.0
#: Fewest samples for the ``head`` update (a 33-weight layer from fewer is noise, even pulled); below, ``bias``.
HEAD_MIN_SAMPLES = 10
#: Ridge penalties tried, relative to the mean squared norm of a sample's design row (dimensionless).
PENALTIES: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # weaker ones overfit 5 samples of noise


def ridge_loo(z: ArrayLike, r: ArrayLike, penalty: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Ridge update toward zero and its exact leave-one-out residuals.

    Parameters
    ----------
    z : array_like of shape (n, p)
        Design (the inputs of the updated layer; a column of ones for the bias).
    r : array_like of shape (n,)
        Residuals to explain (target minus the transferred model, in the layer's output units).
    penalty : float
        Ridge penalty (> 0), in the units of ``z @ z.T``.

    Returns
    -------
    delta : numpy.ndarray of shape (p,)
        The update ``argmin ||r - z delta||^2 + penalty ||delta||^2``.
    loo : numpy.ndarray of shape (n,)
        Each sample's residual under the update fitted without it (the units of ``r``).
    """
    z = np.asarray(z, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    gram = z @ z.T  # n x n: k samples, however wide the layer
    inv = np.linalg.inv(gram + penalty * np.eye(r.size))
    hat = gram @ inv
    resid = r - hat @ r
    return z.T @ (inv @ r), resid / np.clip(1.0 - np.diag(hat), 1e-12, None)


def _last_linear(model: Any) -> Any:
    from torch import nn

    layers = [m for m in model.head.modules() if isinstance(m, nn.Linear)] if hasattr(model, "head") else []
    if not layers or layers[-1].out_features != 1:
        raise ValueError(f"{type(model).__name__}: no final linear layer with one output in model.head")
    return layers[-1]


def _head_inputs(model: Any, x: NDArray[np.float32]) -> NDArray[np.float64]:
    """What the final linear layer of ``model.head`` receives for ``x`` (n, width)."""
    import torch  # lazy: a tree model adapts (an offset) without importing torch

    seen: list[Any] = []
    hook = _last_linear(model).register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach()))
    try:
        model.eval()
        with torch.no_grad():
            model(torch.as_tensor(x, dtype=torch.float32))
    finally:
        hook.remove()
    return seen[0].double().cpu().numpy()


class _Offset:
    """A model whose predictions are shifted by a constant (K): the ``bias`` update of a tree model."""

    def __init__(self, model: Any, offset_k: float) -> None:
        self.model, self.offset_k = model, float(offset_k)

    def predict(self, x: ArrayLike) -> NDArray[np.float32]:
        return (np.asarray(self.model.predict(x), dtype=np.float64) + self.offset_k).astype(np.float32)


def adapt_few_shot(model: Any, predict: Any, x: ArrayLike, y: ArrayLike, *, method: str = "head"
                   ) -> tuple[Any, dict[str, Any]]:
    """Adapt a transferred model to k target samples, or leave it as it is where that predicts them better.

    Parameters
    ----------
    model : torch LST model or tree model
        The transferred (stage-2) model; not modified.
    predict : callable
        ``predict(model, x) -> LST (K)`` for this kind of model.
    x : array_like of shape (k, n_features)
        The target samples' raw features.
    y : array_like of shape (k,)
        Their in situ LST (K).
    method : {"head", "bias"}
        The largest update allowed (``head`` also tries ``bias``); trees, and fewer than
        :data:`HEAD_MIN_SAMPLES` samples, take ``bias`` only.

    Returns
    -------
    adapted : model
        A copy with the update (the same object where no update won).
    info : dict
        ``update`` (``"none"``, ``"bias"`` or ``"head"``), ``penalty`` (relative, see :data:`PENALTIES`; None
        for none), ``loo_rmse_k`` (K, of the choice), ``loo_rmse_k_none`` (K, of no change), ``k``.

    Raises
    ------
    ValueError
        If fewer than 3 samples are given (a leave-one-out needs some left in), or ``method`` is unknown.
    """
    if method not in ("head", "bias"):
        raise ValueError(f"few-shot method {method!r} unknown; choose from head, bias")
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64)
    if y.size < 3:
        raise ValueError(f"few-shot adaptation needs at least 3 samples, got {y.size}")
    is_torch = hasattr(model, "norm")
    scale = float(model.norm.y_std) if is_torch else 1.0  # the final layer's output unit, in K
    r = (y - np.asarray(predict(model, x), dtype=np.float64)) / scale
    designs = {"bias": np.ones((y.size, 1))}
    if method == "head" and is_torch and y.size >= HEAD_MIN_SAMPLES:
        h = _head_inputs(model, x)
        designs["head"] = np.hstack([h, np.ones((y.size, 1))])
    # candidates from the smallest change (none) to the largest (the head, least penalised); the standard-error
    # rule keeps the smallest change whose leave-one-out error is within STANDARD_ERRORS of the best: with 5-20
    # samples the minimum over many candidates is itself optimistic, and noise must not buy an update
    cands: list[dict[str, Any]] = [{"update": "none", "penalty": None, "delta": None, "sq": r**2}]
    for update, z in designs.items():
        size = float(np.mean(np.sum(z**2, axis=1)))
        for c in sorted(PENALTIES, reverse=True):
            delta, loo = ridge_loo(z, r, c * size)
            cands.append({"update": update, "penalty": c, "delta": delta, "sq": loo**2})
    top = min(cands, key=lambda c: float(np.mean(c["sq"])))
    bar = float(np.mean(top["sq"])) + STANDARD_ERRORS * float(np.std(top["sq"], ddof=1)) / np.sqrt(y.size)
    best = next(c for c in cands if float(np.mean(c["sq"])) <= bar)
    info = {"update": best["update"], "penalty": best["penalty"], "k": int(y.size),
            "loo_rmse_k": float(np.sqrt(np.mean(best["sq"]))) * scale,
            "loo_rmse_k_none": float(np.sqrt(np.mean(r**2))) * scale}
    if best["update"] == "none":
        return model, info
    delta = np.asarray(best["delta"])
    if not is_torch:
        return _Offset(model, float(delta[-1]) * scale), info
    import torch

    adapted = copy.deepcopy(model)
    layer = _last_linear(adapted)
    with torch.no_grad():
        if best["update"] == "head":
            layer.weight += torch.as_tensor(delta[:-1], dtype=layer.weight.dtype).reshape(layer.weight.shape)
        layer.bias += float(delta[-1])
    adapted.eval()
    return adapted, info
