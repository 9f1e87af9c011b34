"""Tree ensembles for LST: RF (scikit-learn) and LGBM (LightGBM), with their "fine-tuning".

Both wrappers share the interface of the torch models' trainer: ``fit(X, y, *, val=None)`` and
``finetune(X, y, *, n_more, val=None)`` return a history dict, ``predict(X)`` returns LST (K) as
float32. ``X`` is the raw feature matrix of :func:`sftl_dask.features.feature_matrix` (trees need no
normalisation).

Fine-tuning, as the paper does for trees:

- RF: ``warm_start`` adds ``n_more`` trees grown on the fine-tuning data; the forest averages old
  and new trees.
- LGBM: continued boosting (``init_model``): ``n_more`` iterations fitted to the residuals of the
  current model on the fine-tuning data.

``LGBM.fit_dask`` trains the same model with ``lightgbm.dask`` on a simulation table that the Dask
workers read themselves (one LightGBM machine per worker holding data); the result is an ordinary
``Booster``, so fine-tuning and export do not care how it was trained.

Export without pickle: LGBM as LightGBM's text model; RF as a JSON of arrays per tree
(``children_left``, ``children_right``, ``feature``, ``threshold``, ``value``) read back by
:class:`ForestPredictor`, a numpy-only predictor equal to scikit-learn's.
"""

from __future__ import annotations

import operator
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sftl_dask.features import FEATURES
from sftl_dask.metrics import rmse

__all__ = ["FOREST_FORMAT", "LGBM", "RF", "ForestPredictor"]

#: Format tag of the RF JSON export.
FOREST_FORMAT = "sftl-dask-forest/1"


def _as_x(name: str, X: ArrayLike, n_features: int) -> NDArray[np.float32]:
    xa = np.asarray(X, dtype=np.float32)
    if xa.ndim < 1 or xa.shape[-1] != n_features:
        raise ValueError(f"{name}: X must have shape (..., {n_features}), got {xa.shape}")
    return xa


def _as_xy(name: str, X: ArrayLike, y: ArrayLike, n_features: int) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    xa = _as_x(name, X, n_features)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if xa.ndim != 2 or ya.shape[0] != xa.shape[0] or xa.shape[0] == 0:
        raise ValueError(f"{name}: need X (n, {n_features}) and y (n,) with n > 0, got {xa.shape} and {ya.shape}")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError(f"{name}: non-finite values in X or y")
    return xa, ya


# --- distributed LightGBM on a simulation table (LGBM.fit_dask) -------------------------------------------

#: ``LGBM.params`` keys and the scikit-learn names ``lightgbm.dask`` takes them under.
_SKLEARN_NAMES = {"objective": "objective", "learning_rate": "learning_rate", "num_leaves": "num_leaves",
                  "min_child_samples": "min_child_samples", "bagging_fraction": "subsample",
                  "bagging_freq": "subsample_freq", "feature_fraction": "colsample_bytree",
                  "lambda_l2": "reg_lambda", "seed": "random_state"}


def _squared_error(model_str: str, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
                   threads: int) -> tuple[float, int]:
    """On a worker: sum of squared errors (K^2) and row count of a LightGBM text model on local partitions."""
    import lightgbm as lgb

    booster = lgb.Booster(model_str=model_str)
    sse, n = 0.0, 0
    for x, y in zip(xs, ys, strict=True):
        d = booster.predict(x, num_threads=threads) - np.asarray(y, dtype=np.float64)
        sse += float(np.dot(d, d))
        n += int(y.size)
    return sse, n


def _piece(client: Any, rows: RowsOnWorkers, i: int, j: int) -> Any:
    """Item ``j`` of part ``i`` (0 x, 1 y, 2 x_val, 3 y_val), kept on the worker holding the part."""
    return client.submit(operator.itemgetter(j), rows.parts[i], workers=[rows.workers[i]], allow_other_workers=False,
                         pure=False)


def _held_out_rows(client: Any, rows: RowsOnWorkers) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The held-out rows of every part, gathered here (features, LST in K); None without any."""
    held = [i for i, (_, n) in enumerate(rows.sizes) if n]
    if not held:
        return None, None
    got = client.gather([[_piece(client, rows, i, 2), _piece(client, rows, i, 3)] for i in held])
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])


def _train_squared_error(client: Any, text: str, rows: RowsOnWorkers, train: Sequence[int], xs: Mapping[int, Any],
                         ys: Mapping[int, Any]) -> tuple[float, int]:
    """Sum of squared errors (K^2) of the model ``text`` over the training parts and their row count, each worker
    scoring its own parts with its threads."""
    nthreads = client.nthreads()
    by_worker: dict[str, list[int]] = {}
    for i in train:
        by_worker.setdefault(rows.workers[i], []).append(i)
    errs = client.gather([client.submit(_squared_error, text, [xs[i] for i in idx], [ys[i] for i in idx],
                                        int(nthreads.get(w, 1)), workers=[w], pure=False)
                          for w, idx in by_worker.items()])
    return sum(e for e, _ in errs), sum(n for _, n in errs)


def _early_stopping_iteration(booster: Any, x: np.ndarray, y: np.ndarray, rounds: int) -> int:
    """The iteration ``lightgbm.early_stopping(rounds)`` would keep, replayed on ``(x, y)`` after training.

    Tree ``k``'s contribution is ``predict(start_iteration=k, num_iteration=1)`` (the initial score is
    folded into the first tree), so the held-out RMSE of every prefix costs one pass over the trees.
    """
    pred = np.zeros(y.size, dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64)
    best, best_rmse = 0, np.inf
    for k in range(int(booster.current_iteration())):
        pred += booster.predict(x, start_iteration=k, num_iteration=1)
        err = rmse(pred, yy)
        if err < best_rmse:
            best, best_rmse = k + 1, err
        elif k + 1 - best >= rounds:
            break
    return best


class ForestPredictor:
    """Numpy predictor for a regression forest exported as JSON (no scikit-learn, no pickle).

    Each tree is five arrays over its nodes: ``children_left`` / ``children_right`` (-1 at leaves),
    ``feature``, ``threshold`` (go left when ``x[feature] <= threshold``, with ``x`` in float32 as
    scikit-learn does) and ``value`` (the leaf's LST, K). The prediction is the mean over trees.

    Parameters
    ----------
    data : mapping
        The exported document (:meth:`RF.to_json_dict`).

    Raises
    ------
    ValueError
        If the document is not a forest of this format or its arrays are inconsistent.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        if data.get("format") != FOREST_FORMAT:
            raise ValueError(f"forest JSON: format {data.get('format')!r} is not {FOREST_FORMAT!r}")
        self.n_features = int(data["n_features"])
        self._trees: list[tuple[np.ndarray, ...]] = []
        for i, t in enumerate(data["trees"]):
            left = np.asarray(t["children_left"], dtype=np.int64)
            right = np.asarray(t["children_right"], dtype=np.int64)
            feat = np.asarray(t["feature"], dtype=np.int64)
            thr = np.asarray(t["threshold"], dtype=np.float64)
            val = np.asarray(t["value"], dtype=np.float64)
            n = left.size
            if not (right.size == feat.size == thr.size == val.size == n) or n == 0:
                raise ValueError(f"forest JSON: tree {i} has arrays of different lengths")
            internal = left != -1
            if (np.any(left[internal] >= n) or np.any(right[internal] >= n) or np.any(left[internal] <= 0)
                    or np.any(feat[internal] >= self.n_features) or np.any(feat[internal] < 0)):
                raise ValueError(f"forest JSON: tree {i} has out-of-range node or feature indices")
            self._trees.append((left, right, feat, thr, val))
        if not self._trees:
            raise ValueError("forest JSON: no trees")

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return len(self._trees)

    def predict(self, X: ArrayLike, batch_size: int = 65536) -> NDArray[np.float32]:
        """LST (K), shape ``X.shape[:-1]``, from raw features of shape ``(..., n_features)``."""
        xa = _as_x("forest predict", X, self.n_features)
        lead = xa.shape[:-1]
        flat = xa.reshape(-1, self.n_features)
        out = np.empty(flat.shape[0], dtype=np.float32)
        for start in range(0, flat.shape[0], batch_size):
            out[start:start + batch_size] = self._predict_block(flat[start:start + batch_size])
        return out.reshape(lead)

    def _predict_block(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        acc = np.zeros(x.shape[0], dtype=np.float64)
        rows = np.arange(x.shape[0])
        for left, right, feat, thr, val in self._trees:
            node = np.zeros(x.shape[0], dtype=np.int64)
            active = rows[left[node] != -1]
            while active.size:
                nd = node[active]
                nxt = np.where(x[active, feat[nd]] <= thr[nd], left[nd], right[nd])
                node[active] = nxt
                active = active[left[nxt] != -1]
            acc += val[node]
        return (acc / len(self._trees)).astype(np.float32)


class RF:
    """Random forest regressor (scikit-learn) on raw features → LST (K).

    Parameters
    ----------
    n_features : int
        Number of input features.
    n_estimators : int
        Trees grown by :meth:`fit`.
    max_depth, min_samples_leaf, max_features
        As ``RandomForestRegressor``; the defaults bound the tree size (and the JSON export).
    threads : int, optional
        ``n_jobs`` (set it to the Dask worker's thread count).
    seed : int
    """

    kind = "rf"

    def __init__(self, n_features: int = 12, *, n_estimators: int = 200, max_depth: int | None = 20,
                 min_samples_leaf: int = 3, max_features: float | int | str = 1.0, threads: int | None = None,
                 seed: int = 0) -> None:
        from sklearn.ensemble import RandomForestRegressor

        self.n_features = int(n_features)
        self.estimator = RandomForestRegressor(n_estimators=n_estimators, max_depth=max_depth,
                                               min_samples_leaf=min_samples_leaf, max_features=max_features,
                                               n_jobs=threads, random_state=seed, warm_start=True)
        self._config = {"architecture": "RF", "n_features": self.n_features, "n_estimators": n_estimators,
                        "max_depth": max_depth, "min_samples_leaf": min_samples_leaf, "max_features": max_features,
                        "seed": seed}

    @property
    def n_trees(self) -> int:
        """Trees in the forest (0 before fitting)."""
        return len(getattr(self.estimator, "estimators_", []))

    def config(self) -> dict[str, Any]:
        """Architecture and settings, JSON-serialisable."""
        return dict(self._config)

    def _history(self, t0: float, x: np.ndarray, y: np.ndarray, val: tuple[ArrayLike, ArrayLike] | None,
                 added: int) -> dict[str, Any]:
        hist = {"n_trees": self.n_trees, "added_trees": added, "n_train": int(y.size),
                "train_rmse_k": rmse(self.predict(x), y), "val_rmse_k": None}
        if val is not None:
            hist["val_rmse_k"] = rmse(self.predict(val[0]), val[1])
        hist["seconds"] = round(time.perf_counter() - t0, 3)
        return hist

    def fit(self, X: ArrayLike, y: ArrayLike, *, val: tuple[ArrayLike, ArrayLike] | None = None) -> dict[str, Any]:
        """Grow a fresh forest on ``X`` (raw features) and ``y`` (LST, K); returns a history dict."""
        t0 = time.perf_counter()
        x, yy = _as_xy("RF.fit", X, y, self.n_features)
        from sklearn.base import clone

        # a fresh, unfitted copy: with warm_start a refit would otherwise continue the old forest
        self.estimator = clone(self.estimator).set_params(n_estimators=self._config["n_estimators"])
        self.estimator.fit(x, yy)
        return self._history(t0, x, yy, val, self.n_trees)

    def finetune(self, X: ArrayLike, y: ArrayLike, *, n_more: int = 100,
                 val: tuple[ArrayLike, ArrayLike] | None = None) -> dict[str, Any]:
        """Add ``n_more`` trees grown on the fine-tuning data (``warm_start``); old trees are kept.

        Raises
        ------
        ValueError
            If the forest has not been fitted or ``n_more < 1``.
        """
        if not self.n_trees:
            raise ValueError("RF.finetune: fit the forest first")
        if n_more < 1:
            raise ValueError(f"RF.finetune: n_more must be >= 1, got {n_more}")
        t0 = time.perf_counter()
        x, yy = _as_xy("RF.finetune", X, y, self.n_features)
        self.estimator.set_params(n_estimators=self.n_trees + int(n_more))
        self.estimator.fit(x, yy)
        return self._history(t0, x, yy, val, int(n_more))

    def predict(self, X: ArrayLike, batch_size: int = 65536) -> NDArray[np.float32]:
        """LST (K), shape ``X.shape[:-1]``, float32."""
        xa = _as_x("RF.predict", X, self.n_features)
        flat = xa.reshape(-1, self.n_features)
        out = np.empty(flat.shape[0], dtype=np.float32)
        for start in range(0, flat.shape[0], batch_size):
            out[start:start + batch_size] = self.estimator.predict(flat[start:start + batch_size])
        return out.reshape(xa.shape[:-1])

    def to_json_dict(self) -> dict[str, Any]:
        """The forest as plain arrays (see :class:`ForestPredictor`), JSON-serialisable.

        Raises
        ------
        ValueError
            If the forest has not been fitted.
        """
        if not self.n_trees:
            raise ValueError("RF.to_json_dict: the forest is not fitted")
        trees = []
        for est in self.estimator.estimators_:
            t = est.tree_
            trees.append({"children_left": t.children_left.tolist(), "children_right": t.children_right.tolist(),
                          "feature": t.feature.tolist(), "threshold": t.threshold.tolist(),
                          "value": t.value.reshape(t.node_count, -1)[:, 0].tolist()})
        return {"format": FOREST_FORMAT, "n_features": self.n_features, "aggregation": "mean", "target": "lst",
                "unit": "K", "n_trees": len(trees), "trees": trees}


class RowsOnWorkers(Protocol):
    """Training rows held by Dask workers (:func:`sftl_dask.training.distributed.read_simulation_on_workers`)."""

    parts: list[Any]  # futures of (x, y, x_val, y_val): raw features, LST (K); held-out rows in the val part
    workers: list[str]  # the worker holding each part
    sizes: list[tuple[int, int]]  # (training rows, held-out rows) of each part
    label: str  # what they were read from, for messages


class LGBM:
    """Gradient-boosted trees (LightGBM ``Booster``) on raw features → LST (K).

    Parameters
    ----------
    n_features : int
        Number of input features.
    n_estimators : int
        Boosting iterations of :meth:`fit` (an upper bound with ``early_stopping_rounds``).
    learning_rate, num_leaves, min_child_samples, subsample, colsample_bytree, reg_lambda
        LightGBM settings (``bagging_fraction`` = ``subsample``, bagging every iteration when < 1).
    early_stopping_rounds : int, optional
        Stop when the validation RMSE has not improved for this many rounds (needs ``val``).
    threads : int, optional
        ``num_threads`` (set it to the Dask worker's thread count).
    seed : int
    """

    kind = "lgbm"

    def __init__(self, n_features: int = 12, *, n_estimators: int = 300, learning_rate: float = 0.05,
                 num_leaves: int = 31, min_child_samples: int = 20, subsample: float = 0.8,
                 colsample_bytree: float = 1.0, reg_lambda: float = 0.0, early_stopping_rounds: int | None = None,
                 threads: int | None = None, seed: int = 0) -> None:
        self.n_features = int(n_features)
        self.n_estimators = int(n_estimators)
        self.early_stopping_rounds = early_stopping_rounds
        self.threads = threads
        self.params: dict[str, Any] = {
            "objective": "regression", "metric": "rmse", "learning_rate": learning_rate, "num_leaves": num_leaves,
            "min_child_samples": min_child_samples, "bagging_fraction": subsample,
            "bagging_freq": 1 if subsample < 1 else 0, "feature_fraction": colsample_bytree,
            "lambda_l2": reg_lambda, "seed": seed, "deterministic": True, "force_row_wise": True,
            "num_threads": int(threads or 0), "verbosity": -1,
        }
        self.booster: Any = None
        self._config = {"architecture": "LGBM", "n_features": self.n_features, "n_estimators": n_estimators,
                        "learning_rate": learning_rate, "num_leaves": num_leaves,
                        "min_child_samples": min_child_samples, "subsample": subsample,
                        "colsample_bytree": colsample_bytree, "reg_lambda": reg_lambda, "seed": seed}

    @property
    def n_trees(self) -> int:
        """Boosting iterations in the model (0 before fitting)."""
        return 0 if self.booster is None else int(self.booster.current_iteration())

    def config(self) -> dict[str, Any]:
        """Architecture and settings, JSON-serialisable."""
        return dict(self._config)

    def _train(self, name: str, X: ArrayLike, y: ArrayLike, rounds: int, params: dict[str, Any],
               val: tuple[ArrayLike, ArrayLike] | None, init_model: Any) -> dict[str, Any]:
        import lightgbm as lgb

        t0 = time.perf_counter()
        x, yy = _as_xy(name, X, y, self.n_features)
        train = lgb.Dataset(x, yy, params={"verbosity": -1}, free_raw_data=False)
        callbacks, valid = [], []
        if val is not None:
            xv, yv = _as_xy(f"{name} val", val[0], val[1], self.n_features)
            valid = [lgb.Dataset(xv, yv, reference=train)]
            if self.early_stopping_rounds:
                callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        before = self.n_trees
        booster = lgb.train(params, train, num_boost_round=int(rounds), valid_sets=valid, callbacks=callbacks,
                            init_model=init_model, keep_training_booster=True)
        if booster.best_iteration and booster.best_iteration < booster.current_iteration():
            # keep only the best iterations (text export and predict then agree)
            booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
        self.booster = booster
        hist = {"n_trees": self.n_trees, "added_trees": self.n_trees - (before if init_model is not None else 0),
                "n_train": int(yy.size), "train_rmse_k": rmse(self.predict(x), yy), "val_rmse_k": None}
        if val is not None:
            hist["val_rmse_k"] = rmse(self.predict(val[0]), val[1])
        hist["seconds"] = round(time.perf_counter() - t0, 3)
        return hist

    def fit(self, X: ArrayLike, y: ArrayLike, *, val: tuple[ArrayLike, ArrayLike] | None = None) -> dict[str, Any]:
        """Boost a fresh model on ``X`` (raw features) and ``y`` (LST, K); returns a history dict."""
        self.booster = None
        return self._train("LGBM.fit", X, y, self.n_estimators, self.params, val, None)

    def fit_dask(self, rows: RowsOnWorkers, *, client: Any) -> dict[str, Any]:
        """Boost a fresh model with ``lightgbm.dask`` on training rows the Dask workers already hold.

        The rows are read by the training layer
        (:func:`sftl_dask.training.distributed.read_simulation_on_workers`: each worker reads its share of
        the table, computes the features and keeps them); LightGBM then trains data-parallel with one
        machine per worker that holds training rows (ports picked on the workers, ``num_threads`` = the
        worker's thread count). The settings are those of :attr:`params`. Only the held-out rows (and a few
        counts) come back to this process. The result is a plain ``Booster`` in :attr:`booster`, so
        :meth:`predict`, :meth:`finetune`, :meth:`model_to_string` and the artifact export work as after
        :meth:`fit`.

        Parameters
        ----------
        rows : RowsOnWorkers
            Futures of ``(x, y, x_val, y_val)`` (raw features, LST in K; the validation part holds the
            held-out rows), the worker holding each, their row counts and a label for messages.
        client : distributed.Client
            The cluster to train on. Call from the client side, not from inside a task: training
            takes a thread on every worker that holds data.

        Returns
        -------
        dict
            ``n_trees``, ``added_trees``, ``n_train``, ``train_rmse_k`` (K, computed on the
            workers), ``n_val``, ``val_rmse_k`` (K on the held-out rows, None without them),
            ``seconds``, ``n_workers`` (LightGBM machines), ``n_partitions`` and ``rows_per_worker``
            (training rows per worker address).

        Raises
        ------
        ValueError
            If the model does not take all features, or no part holds training rows.

        Notes
        -----
        With ``early_stopping_rounds`` all ``n_estimators`` rounds are trained, then the model is cut
        at the iteration :func:`lightgbm.early_stopping` would keep on the held-out rows (stopping
        inside distributed training could end the machines at different rounds).
        """
        import lightgbm as lgb  # lazy: importing the models costs no LightGBM (~0.5 s) until one trains

        t0 = time.perf_counter()
        if self.n_features != len(FEATURES):
            raise ValueError(f"LGBM.fit_dask: the model must take all {len(FEATURES)} features, not {self.n_features}")
        self.booster = None
        train = [i for i, (n, _) in enumerate(rows.sizes) if n]
        if not train:
            raise ValueError(f"LGBM.fit_dask: {rows.label}: no training rows")
        xs = {i: _piece(client, rows, i, 0) for i in train}
        ys = {i: _piece(client, rows, i, 1) for i in train}
        text = self._boost_on_workers(client, rows, train, xs, ys)
        x_val, y_val = _held_out_rows(client, rows)
        booster = lgb.Booster(model_str=text)
        if self.early_stopping_rounds and x_val is not None:
            best = _early_stopping_iteration(booster, x_val, y_val, int(self.early_stopping_rounds))
            if best < booster.current_iteration():
                text = booster.model_to_string(num_iteration=best)
                booster = lgb.Booster(model_str=text)
        self.booster = booster
        rows_per_worker: dict[str, int] = {}
        for i in train:
            rows_per_worker[rows.workers[i]] = rows_per_worker.get(rows.workers[i], 0) + rows.sizes[i][0]
        sse, n_train = _train_squared_error(client, text, rows, train, xs, ys)
        machines = re.search(r"^\[num_machines: (\d+)\]$", text, flags=re.MULTILINE)
        hist: dict[str, Any] = {
            "n_trees": self.n_trees, "added_trees": self.n_trees, "n_train": n_train,
            # the workers' summed squared errors: the training rows never come to this process
            "train_rmse_k": float(np.sqrt(sse / n_train)),
            "n_val": 0 if y_val is None else int(y_val.size),
            "val_rmse_k": None if x_val is None else rmse(self.predict(x_val), y_val),
            "n_workers": int(machines.group(1)) if machines else 1, "n_partitions": len(train),
            "rows_per_worker": rows_per_worker,
        }
        hist["seconds"] = round(time.perf_counter() - t0, 3)
        return hist

    def _boost_on_workers(self, client: Any, rows: RowsOnWorkers, train: Sequence[int], xs: Mapping[int, Any],
                          ys: Mapping[int, Any]) -> str:
        """Boost :attr:`n_estimators` rounds with ``lightgbm.dask`` on the workers' training parts; the model text."""
        import dask.array as da  # lazy, as lightgbm
        from lightgbm.dask import DaskLGBMRegressor

        X = da.concatenate([da.from_delayed(xs[i], shape=(rows.sizes[i][0], len(FEATURES)), dtype=np.float32)
                            for i in train])
        y = da.concatenate([da.from_delayed(ys[i], shape=(rows.sizes[i][0],), dtype=np.float32) for i in train])
        kwargs = {_SKLEARN_NAMES.get(k, k): v for k, v in self.params.items() if k not in ("num_threads", "n_jobs")}
        est = DaskLGBMRegressor(client=client, n_estimators=self.n_estimators, **kwargs)
        with warnings.catch_warnings():
            # lightgbm.dask sets num_threads to each worker's thread count and says so about n_jobs
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            est.fit(X, y)
        return str(est.booster_.model_to_string())

    def finetune(self, X: ArrayLike, y: ArrayLike, *, n_more: int = 100,
                 val: tuple[ArrayLike, ArrayLike] | None = None, **params: Any) -> dict[str, Any]:
        """Continue boosting for ``n_more`` iterations on the fine-tuning data (``init_model``).

        ``params`` override LightGBM settings for these iterations (e.g. ``learning_rate``,
        ``min_child_samples`` for small matchup sets).

        Raises
        ------
        ValueError
            If the model has not been fitted or ``n_more < 1``.
        """
        if self.booster is None:
            raise ValueError("LGBM.finetune: fit the model first")
        if n_more < 1:
            raise ValueError(f"LGBM.finetune: n_more must be >= 1, got {n_more}")
        return self._train("LGBM.finetune", X, y, n_more, {**self.params, **params}, val, self.booster)

    def predict(self, X: ArrayLike, batch_size: int = 65536) -> NDArray[np.float32]:
        """LST (K), shape ``X.shape[:-1]``, float32."""
        if self.booster is None:
            raise ValueError("LGBM.predict: the model is not fitted")
        xa = _as_x("LGBM.predict", X, self.n_features)
        flat = xa.reshape(-1, self.n_features)
        out = self.booster.predict(flat, num_threads=int(self.threads or 0))
        return np.asarray(out, dtype=np.float32).reshape(xa.shape[:-1])

    def model_to_string(self) -> str:
        """LightGBM's text model (what the artifact's ``model.txt`` holds)."""
        if self.booster is None:
            raise ValueError("LGBM.model_to_string: the model is not fitted")
        return self.booster.model_to_string()
