"""Data-parallel pre-training of the torch LST models across Dask workers (``torch.distributed``).

:func:`pretrain_distributed` trains one model on the simulation table with one rank per Dask worker:

1. a plan task on one worker balances the table's part files into ``world_size`` shards of row
   ranges (:func:`sftl_dask.simulate.plan_row_ranges`: whole files or row groups when there are
   enough, else row ranges);
2. each worker reads its own shard (:func:`sftl_dask.simulate.read_training_rows`: only the needed
   columns, :func:`~sftl_dask.features.feature_matrix`, the held-out profiles split off as its local
   validation shard); the shard stays in that worker's memory, the data never passes through the driver;
3. the normalisation statistics are global: each shard returns counts, means and sums of squared
   deviations, combined on the driver, which builds the model with them and sends it to the workers;
4. one training task per worker, all running at once, joins a ``torch.distributed`` process group
   (gloo on CPU, NCCL on GPU) and trains under ``DistributedDataParallel``: gradients are averaged
   every step, every rank takes the same number of steps, and the validation RMSE is all-reduced so
   every rank takes the same early-stopping decision; rank 0 returns the best state.

The optimiser, learning-rate schedule and loss are those of :func:`sftl_dask.models.trainer.fit_torch`.
``torch.distributed`` keeps one process group per process: each rank needs a worker process of its
own (``LocalCluster(processes=True)``, as :func:`sftl_dask.cluster.get_client` makes), and one worker
runs one distributed training at a time.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import inspect
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from distributed import get_worker, wait
from distributed.comm import get_address_host
from numpy.typing import NDArray
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sftl_dask.models import TORCH_MODELS, build_model
from sftl_dask.models.finetune import trainable_parameters
from sftl_dask.models.trainer import SCHEDULES, as_xy, lr_factor, predict_torch, torch_threads, train_step
from sftl_dask.simulate import RowRange, plan_row_ranges, read_training_rows, simulation_parts

__all__ = ["BACKENDS", "DistributedSettings", "WorkerRows", "pretrain_distributed", "read_simulation_on_workers"]

#: Process-group backends: ``auto`` is NCCL when every rank has a GPU of its own, else gloo.
BACKENDS = ("auto", "gloo", "nccl")

_STD_EPS = 1e-6  # added to feature standard deviations, as tasks.TorchTask.configure_model does
_POLL_S = 0.5  # driver polling interval while the ranks train (s)


# ----------------------------------------------------------------------------------- shards (workers)
def _shard_labels(root: str, plan: Sequence[Sequence[RowRange]]) -> list[str]:
    """Name each rank's shard for error messages: the table, the rank, its files (rows where a file is split)."""
    owners: dict[str, set[int]] = {}
    for rank, ranges in enumerate(plan):
        for r in ranges:
            owners.setdefault(r.file, set()).add(rank)
    labels = []
    for rank, ranges in enumerate(plan):
        pieces = [Path(f).name if len(owners[f]) == 1 else f"{Path(f).name} rows {a}-{b}" for f, a, b in ranges]
        labels.append(f"{root} (rank {rank}: {', '.join(pieces)})")
    return labels


@dataclass
class _Shard:
    """One rank's data, kept in its worker's memory between the statistics and the training tasks."""

    label: str
    x: NDArray[np.float32]  # training features (n, n_features), feature units
    y: NDArray[np.float32]  # training LST (K)
    x_val: NDArray[np.float32]
    y_val: NDArray[np.float32]


def _load_shard(label: str, ranges: Sequence[RowRange], holdout: NDArray[np.int64]) -> _Shard:
    """Read a rank's row ranges as features and LST, held-out profiles apart (runs on a worker)."""
    x, y, x_val, y_val = read_training_rows(ranges, holdout)
    if y.size == 0:
        raise ValueError(f"{label}: empty shard (every row is in holdout_profiles); use fewer workers")
    return _Shard(label, x, y, x_val, y_val)


def _shard_stats(shard: _Shard) -> dict[str, Any]:
    """Count, mean and sum of squared deviations of the training features and LST, float64 (runs on a worker)."""
    x = shard.x.astype(np.float64)
    y = shard.y.astype(np.float64)
    mx, my = x.mean(axis=0), float(y.mean())
    return {"n": x.shape[0], "x_mean": mx, "x_m2": ((x - mx) ** 2).sum(axis=0), "y_mean": my,
            "y_m2": float(((y - my) ** 2).sum()), "n_val": int(shard.y_val.shape[0])}


def _combine_stats(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Global mean and population standard deviation from per-shard statistics (Chan et al. pairwise update)."""
    n = sum(int(p["n"]) for p in parts)
    out: dict[str, Any] = {"n": n, "n_val": sum(int(p["n_val"]) for p in parts)}
    for key in ("x", "y"):
        mean = sum(p["n"] * np.asarray(p[f"{key}_mean"], dtype=np.float64) for p in parts) / n
        m2 = sum(np.asarray(p[f"{key}_m2"], dtype=np.float64) + p["n"] * (np.asarray(p[f"{key}_mean"]) - mean) ** 2
                 for p in parts)
        out[f"{key}_mean"], out[f"{key}_std"] = mean, np.sqrt(m2 / n)
    return out


# ------------------------------------------------------------------------------------- cluster probes
def _probe() -> dict[str, Any]:
    """Process, host and GPU identity of a worker (runs there through ``client.run``)."""
    info: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(), "n_gpu": 0, "gpu0": None}
    if torch.cuda.is_available():
        info["n_gpu"] = torch.cuda.device_count()
        info["gpu0"] = str(getattr(torch.cuda.get_device_properties(0), "uuid", "")) or None
    return info


def _free_port() -> int:
    """A TCP port free on this worker's host (bound to port 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _select_workers(client: Any, n_workers: int | None) -> list[str]:
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise ValueError("pretrain_distributed: the Dask client has no workers")
    if n_workers is not None:
        if n_workers < 1:
            raise ValueError(f"pretrain_distributed: n_workers must be >= 1, got {n_workers}")
        if n_workers > len(workers):
            raise ValueError(f"pretrain_distributed: n_workers={n_workers} but the cluster has {len(workers)} "
                             "worker(s)")
        workers = workers[:n_workers]
    return workers


def _devices(infos: Sequence[Mapping[str, Any]], backend: str) -> tuple[str, list[int | None]]:
    """The backend and each rank's CUDA device index (None: CPU).

    A rank uses ``cuda:0`` when the workers of its host see different GPUs as device 0 (one GPU per
    worker, as dask-cuda sets ``CUDA_VISIBLE_DEVICES``), else ``cuda:<its index among the host's ranks>``.
    NCCL needs a GPU of its own per rank; ``auto`` falls back to gloo on CPU otherwise.
    """
    local: list[int] = []
    seen: dict[str, int] = {}
    for info in infos:
        local.append(seen.get(info["host"], 0))
        seen[info["host"]] = local[-1] + 1
    idx: list[int | None] = []
    for info, lr in zip(infos, local, strict=True):
        peers = [i for i in infos if i["host"] == info["host"]]
        own_gpu0 = all(p["gpu0"] for p in peers) and len({p["gpu0"] for p in peers}) == len(peers)
        idx.append(0 if info["n_gpu"] and own_gpu0 else (lr if lr < info["n_gpu"] else None))
    gpus_ok = all(i is not None for i in idx)
    if backend == "nccl" and not gpus_ok:
        raise ValueError("pretrain_distributed: backend 'nccl' needs one GPU per rank; workers have "
                         f"{[i['n_gpu'] for i in infos]} GPU(s) for {len(infos)} rank(s) (use 'gloo' or 'auto')")
    chosen = "nccl" if backend == "nccl" or (backend == "auto" and gpus_ok) else "gloo"
    return chosen, (idx if chosen == "nccl" else [None] * len(infos))


# ------------------------------------------------------------------------------------ training (ranks)
def _param_checksum(model: Any) -> str:
    """SHA-256 of the model's parameters (state-dict order, CPU bytes): equal on ranks holding equal weights."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _train_rank(shard: _Shard, model: Any, rank: int, world_size: int, init_method: str, backend: str,
                cuda_index: int | None, cfg: Mapping[str, Any], topic: str | None) -> dict[str, Any]:
    """One rank of the data-parallel training (a Dask task pinned to its worker)."""

    if dist.is_initialized():
        raise RuntimeError(f"rank {rank}: this worker is already in a torch.distributed process group "
                           "(another distributed training running on it?)")
    try:
        worker: Any = get_worker()
        threads = int(getattr(worker.state, "nthreads", 0) or getattr(worker, "nthreads", 0) or 0)
    except ValueError:  # not on a worker
        worker, threads = None, 0
    device = torch.device("cuda", cuda_index) if cuda_index is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    def log(entry: dict[str, Any]) -> None:  # rank 0 relays each epoch's log to the driver
        if rank == 0 and worker is not None and topic is not None:
            worker.log_event(topic, entry)

    with torch_threads(threads):
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=float(cfg["timeout_s"])))
        try:
            with torch.random.fork_rng(devices=[cuda_index] if cuda_index is not None else []):
                torch.manual_seed(int(np.random.SeedSequence([int(cfg["seed"]), rank]).generate_state(1)[0]))
                return _ddp_loop(shard, model, rank, world_size, device, cfg, log)
        finally:
            dist.destroy_process_group()


def _ddp_loop(shard: _Shard, model: Any, rank: int, world_size: int, device: Any, cfg: Mapping[str, Any],
              log: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    xt, yt = as_xy(f"{shard.label} train", shard.x, shard.y, int(model.n_features))
    model = model.to(device)
    # parameters the forward never uses (e.g. CNN's empty CLS token) would stall DDP's gradient
    # reduction; fit_torch leaves them untouched (no gradient), so freeze them for the run
    frozen = _unused_parameters(model, xt[:2].to(device))
    for p in frozen:
        p.requires_grad_(False)
    try:
        return _ddp_epochs(shard, model, rank, world_size, device, cfg, log, xt, yt, t0)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _unused_parameters(model: Any, xb: Any) -> list[Any]:
    """Trainable parameters that get no gradient from a forward pass on ``xb`` (structurally unused)."""
    was_training = model.training
    model.eval()  # no dropout draws: the ranks' random streams stay as seeded
    try:
        model(xb).sum().backward()
        unused = [p for p in model.parameters() if p.requires_grad and p.grad is None]
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return unused


def _ddp_epochs(shard: _Shard, model: Any, rank: int, world_size: int, device: Any, cfg: Mapping[str, Any],
                log: Callable[[dict[str, Any]], None], xt: Any, yt: Any, t0: float) -> dict[str, Any]:
    has_val = shard.y_val.shape[0] > 0
    xv = np.ascontiguousarray(shard.x_val, dtype=np.float32)
    yv = shard.y_val.astype(np.float64)
    y_scale = float(model.norm.y_std) if hasattr(model, "norm") else 1.0
    # buffers (the normalisation) are equal on every rank: no need to sync them every forward
    sync_kw = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
               inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **sync_kw)
    opt = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=float(cfg["lr"]),
                            weight_decay=float(cfg["weight_decay"]))
    batch = max(1, int(cfg["batch_size"]) // world_size)
    n = xt.shape[0]
    steps_t = torch.tensor([math.ceil(n / batch)], dtype=torch.int64, device=device)
    dist.all_reduce(steps_t, op=dist.ReduceOp.MIN)
    steps = int(steps_t.item())
    setup_s = time.perf_counter() - t0  # DDP construction (parameter broadcast) and the first collective
    epochs = int(cfg["epochs"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(str(cfg["schedule"]), epochs * steps))
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([int(cfg["seed"]), rank, 1]).generate_state(1)[0]))
    crit = nn.MSELoss() if cfg["loss"] == "mse" else nn.HuberLoss(delta=1.0)
    patience = cfg["patience"]

    hist: dict[str, Any] = {"epoch": [], "train_rmse_k": [], "val_rmse_k": [], "lr": []}
    best_val, best_epoch, best_state, bad, stopped = math.inf, -1, None, 0, False
    epoch = 0
    for epoch in range(epochs):
        ddp.train()
        sq = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        for idx in torch.randperm(n, generator=gen)[: steps * batch].split(batch):
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            pred = train_step(ddp, crit, opt, sched, xb, yb, y_scale)
            sq += ((pred - yb) ** 2).sum().double()
            seen += int(idx.numel())
        val_sse = 0.0
        if has_val:
            val_sse = float(np.sum((predict_torch(model, xv).astype(np.float64) - yv) ** 2))
        tot = torch.tensor([float(sq), float(seen), val_sse, float(yv.shape[0])], dtype=torch.float64,
                           device=device)
        dist.all_reduce(tot, op=dist.ReduceOp.SUM)  # identical on every rank: same decisions below
        g_sq, g_seen, g_vsse, g_nval = (float(v) for v in tot.cpu())
        entry: dict[str, Any] = {"epoch": epoch, "train_rmse_k": math.sqrt(g_sq / g_seen),
                                 "val_rmse_k": math.sqrt(g_vsse / g_nval) if g_nval else None,
                                 "lr": float(opt.param_groups[-1]["lr"])}
        if entry["val_rmse_k"] is not None:
            if entry["val_rmse_k"] < best_val:
                best_val, best_epoch, bad = entry["val_rmse_k"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        for k in ("epoch", "train_rmse_k", "val_rmse_k", "lr"):
            hist[k].append(entry[k])
        log(entry)
        if patience is not None and g_nval and bad >= int(patience):
            stopped = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    hist.update(best_epoch=best_epoch if best_state is not None else epoch,
                best_val_rmse_k=best_val if best_state is not None else None, stopped_early=stopped,
                trainable_parameters=trainable_parameters(model), steps_per_epoch=steps, batch_per_rank=batch,
                setup_seconds=round(setup_s, 3), seconds=round(time.perf_counter() - t0, 3))
    out: dict[str, Any] = {"rank": rank, "checksum": _param_checksum(model), "n_train": n,
                           "n_val": int(yv.shape[0])}
    if rank == 0:
        out["history"] = hist
        out["state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return out


# ------------------------------------------------------------------------------------------- driver
def _wait(client: Any, futures: Sequence[Any], workers: Sequence[str], topic: str,
          progress: Callable[[dict[str, Any]], None] | None) -> list[Any]:
    """Gather the rank results, failing fast on the first error or a lost worker, relaying progress."""
    delivered = 0

    def relay() -> None:
        nonlocal delivered
        if progress is None:
            return
        events = list(client.get_events(topic))
        for _, entry in events[delivered:]:
            progress(dict(entry))
        delivered = len(events)

    while True:
        try:
            wait(futures, timeout=_POLL_S)
        except TimeoutError:  # nothing new within the poll interval
            pass
        relay()
        for f in futures:
            if f.status == "error":
                f.result()  # raises the rank's exception on the driver
        if all(f.done() for f in futures):
            break
        lost = set(workers) - set(client.scheduler_info()["workers"])
        if lost:
            raise RuntimeError(f"pretrain_distributed: worker(s) {', '.join(sorted(lost))} left the cluster "
                               "during training")
    # rank 0 logs each epoch before its task finishes, through the same worker-to-scheduler stream
    relay()
    return client.gather(list(futures))


@dataclass(frozen=True)
class DistributedSettings:
    """What :func:`pretrain_distributed` trains and how; checked once, when made.

    Parameters
    ----------
    model_name : {"dnn", "trf", "cnn"}
        The torch model (:data:`sftl_dask.models.TORCH_MODELS`).
    model_params : mapping
        Model settings for :func:`sftl_dask.models.build_model` (e.g. ``hidden`` for DNN).
    epochs : int
        Maximum epochs.
    batch_size : int
        Global rows per optimiser step; each rank takes ``batch_size // world_size``.
    lr, weight_decay : float
        Peak learning rate; AdamW decoupled weight decay.
    holdout_profiles : sequence of int
        ``profile_id`` values held out as the validation set (RMSE in K every epoch, early stopping,
        best state restored); empty: no validation, the last state is kept.
    seed : int
        Seeds the model initialisation (on the driver), and each rank's shuffling and dropout.
    n_workers : int, optional
        Ranks (``world_size``): the first ``n_workers`` workers by address (default: all).
    backend : {"auto", "gloo", "nccl"}
        ``auto``: NCCL with the model and batches on each rank's GPU when every rank has a GPU of its
        own, else gloo on CPU.
    schedule : {"cosine", "onecycle", "constant"}
        Per-step learning-rate schedule, as :func:`~sftl_dask.models.trainer.fit_torch`.
    patience : int or None
        Early-stopping patience (epochs); ``None`` never stops early.
    loss : {"mse", "huber"}
        Loss on the standardised target.
    timeout_s : float
        Process-group timeout (s): rendezvous and collectives fail after it instead of hanging on a
        dead or missing peer.

    Raises
    ------
    ValueError
        An unknown model, backend, schedule or loss, or a setting out of range (named).
    """

    model_name: str
    model_params: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 8192
    lr: float = 2e-3
    weight_decay: float = 1e-4
    holdout_profiles: Sequence[int] = ()
    seed: int = 0
    n_workers: int | None = None
    backend: str = "auto"
    schedule: str = "cosine"
    patience: int | None = 10
    loss: str = "mse"
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        name = str(self.model_name).lower()
        if name not in TORCH_MODELS:
            raise ValueError(f"pretrain_distributed: model {self.model_name!r} is not a torch model; choose from "
                             f"{', '.join(TORCH_MODELS)}")
        object.__setattr__(self, "model_name", name)
        if self.backend not in BACKENDS:
            raise ValueError(f"pretrain_distributed: backend {self.backend!r} unknown; choose from "
                             f"{', '.join(BACKENDS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"pretrain_distributed: schedule {self.schedule!r} unknown; choose from "
                             f"{', '.join(SCHEDULES)}")
        if self.loss not in ("mse", "huber"):
            raise ValueError(f"pretrain_distributed: loss {self.loss!r} unknown; choose from mse, huber")
        if (self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.weight_decay < 0
                or not self.timeout_s > 0):
            raise ValueError("pretrain_distributed: need epochs >= 1, batch_size >= 1, lr > 0, weight_decay >= 0, "
                             f"timeout_s > 0; got {self.epochs}, {self.batch_size}, {self.lr}, {self.weight_decay}, "
                             f"{self.timeout_s}")

    def loop(self) -> dict[str, Any]:
        """The settings each rank's training loop reads (plain values, sent with the task)."""
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "seed": self.seed, "schedule": self.schedule,
                "patience": self.patience, "loss": self.loss, "timeout_s": self.timeout_s}


def pretrain_distributed(settings: DistributedSettings, sim_path: str | Path, *, client: Any,
                         progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """Pre-train a torch LST model data-parallel on the simulation table, one rank per Dask worker.

    Parameters
    ----------
    settings : DistributedSettings
        The model, its training settings, the held-out profiles, the ranks and the backend.
    sim_path : path
        Simulation table: a Parquet dataset directory (``part-*.parquet``) written by
        :func:`sftl_dask.simulate.write_simulation`, or one Parquet file, readable by every worker
        at this path.
    client : distributed.Client
        Its workers run the ranks; each must be a process of its own.
    progress : callable, optional
        Called on the driver with each epoch's log (``epoch``, ``train_rmse_k``, ``val_rmse_k``, ``lr``),
        relayed from rank 0 while training runs.

    Returns
    -------
    model : torch.nn.Module
        The trained model on the CPU, in eval mode, normalised with the global statistics of the
        training rows (feature means / standard deviations in feature units, LST mean / std in K).
    history : dict
        Per-epoch lists ``epoch``, ``train_rmse_k``, ``val_rmse_k`` (K, over all ranks), ``lr``; and
        ``best_epoch``, ``best_val_rmse_k`` (K), ``stopped_early``, ``trainable_parameters``,
        ``seconds`` (training loop on rank 0, s), ``setup_seconds`` (of which DDP set-up, s),
        ``wall_seconds`` (the whole call, s), ``n_train``, ``n_val`` (rows, all ranks),
        ``rows_per_rank``, ``steps_per_epoch``, ``batch_per_rank``, ``world_size``, ``backend``,
        ``device``, ``workers`` and ``param_checksums`` (SHA-256 of each rank's final parameters:
        all equal, as the gradients are averaged).

    Raises
    ------
    ValueError
        Naming the path, file or column: table not found, no part files, a missing column, more
        ranks than rows, an empty shard (every row of a shard held out), invalid feature inputs;
        a client without workers, ``n_workers`` larger than the cluster, ``batch_size`` smaller than
        the ranks, or workers sharing a process.
    RuntimeError
        If a worker leaves the cluster during training or the ranks end with different parameters.
    """
    t_start = time.perf_counter()
    if client is None:
        raise ValueError("pretrain_distributed: a Dask client is required")
    workers = _select_workers(client, settings.n_workers)
    if settings.batch_size < len(workers):
        raise ValueError(f"pretrain_distributed: batch_size {settings.batch_size} is smaller than world_size "
                         f"{len(workers)}")
    backend, cuda_idx = _devices(_worker_infos(client, workers), settings.backend)
    sim = str(Path(sim_path))
    pin = {"allow_other_workers": False, "pure": False}
    plan = client.submit(plan_row_ranges, sim, len(workers), workers=[workers[0]], **pin).result()
    holdout = np.unique(np.asarray(list(settings.holdout_profiles), dtype=np.int64))
    shards = [client.submit(_load_shard, label, ranges, holdout, workers=[w], **pin)
              for label, ranges, w in zip(_shard_labels(sim, plan), plan, workers, strict=True)]
    futures: list[Any] = list(shards)
    try:
        model = _initial_model(settings, client.gather([client.submit(_shard_stats, s, workers=[w], **pin)
                                                        for s, w in zip(shards, workers, strict=True)]))
        init_method = _init_method(client, workers[0])
        topic = f"sftl-pretrain-distributed-{uuid.uuid4().hex}"
        runs = [client.submit(_train_rank, s, model, rank, len(workers), init_method, backend, cuda_idx[rank],
                              settings.loop(), topic, workers=[w], **pin)
                for rank, (s, w) in enumerate(zip(shards, workers, strict=True))]
        futures += runs
        results = _wait(client, runs, workers, topic, progress)
    finally:
        client.cancel(futures)
    return model, _gathered(model, results, workers, backend, t_start)


def _worker_infos(client: Any, workers: Sequence[str]) -> list[dict[str, Any]]:
    """Each worker's process, host and GPUs (:func:`_probe`), refusing workers that share a process."""
    by_addr = client.run(_probe, workers=list(workers))
    infos = [by_addr[w] for w in workers]
    if len({(i["host"], i["pid"]) for i in infos}) < len(workers):
        raise ValueError("pretrain_distributed: workers share a process; torch.distributed needs one worker "
                         "process per rank (LocalCluster(processes=True))")
    return infos


def _initial_model(settings: DistributedSettings, parts: Sequence[Mapping[str, Any]]) -> Any:
    """The model to train, seeded, normalised with the global statistics of the shards' training rows."""
    stats = _combine_stats(parts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return build_model(settings.model_name, int(stats["x_mean"].shape[0]), stats["x_mean"],
                           stats["x_std"] + _STD_EPS, target_mean=float(stats["y_mean"]),
                           target_std=float(stats["y_std"]), **dict(settings.model_params))


def _init_method(client: Any, first: str) -> str:
    """The rendezvous address of the process group: a free port on the first worker's host."""
    host = get_address_host(first)
    port = client.run(_free_port, workers=[first])[first]
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _gathered(model: Any, results: Sequence[Mapping[str, Any]], workers: Sequence[str], backend: str,
              t_start: float) -> dict[str, Any]:
    """Load rank 0's best state into ``model`` (the ranks must agree) and return the run's history."""
    sums = [r["checksum"] for r in results]
    if len(set(sums)) != 1:
        raise RuntimeError(f"pretrain_distributed: ranks ended with different parameters ({sums})")
    model.load_state_dict(results[0]["state"])
    model.eval()
    hist = dict(results[0]["history"])
    hist.update(n_train=sum(r["n_train"] for r in results), n_val=sum(r["n_val"] for r in results),
                rows_per_rank=[r["n_train"] for r in results], world_size=len(workers), backend=backend,
                device="cuda" if backend == "nccl" else "cpu", workers=list(workers), param_checksums=sums,
                wall_seconds=round(time.perf_counter() - t_start, 3))
    return hist


# ------------------------------------------------------------------------- trees: rows read on the workers
@dataclass
class WorkerRows:
    """Training rows of a simulation table held by Dask workers (:func:`read_simulation_on_workers`)."""

    parts: list[Any]  # futures of (x, y, x_val, y_val) feature arrays; held-out profiles in the val part
    workers: list[str]  # the worker holding each part
    sizes: list[tuple[int, int]]  # (training rows, held-out rows) of each part
    label: str  # the table, for messages


def read_simulation_on_workers(sim_path: str | Path, *, client: Any, holdout_profiles: Iterable[int] = (),
                               partitions: int | None = None) -> WorkerRows:
    """Have the workers read a simulation table as features, each its share, and keep it.

    Parameters
    ----------
    sim_path : path
        A Parquet dataset directory (``part-*.parquet``) written by :func:`sftl_dask.simulate.write_simulation`,
        or one Parquet file, with :data:`~sftl_dask.features.REQUIRED_INPUTS`, ``lst`` (K) and ``profile_id``.
    client : distributed.Client
        The cluster whose workers read and hold the rows.
    holdout_profiles : iterable of int
        ``profile_id`` values kept apart as validation rows.
    partitions : int, optional
        Row partitions (default: one per worker), at least one per file; files are split into row ranges
        when there are fewer files than partitions (:func:`sftl_dask.simulate.plan_row_ranges`). Partitions
        are pinned to workers balancing rows (largest first onto the least loaded worker).

    Returns
    -------
    WorkerRows
        What :meth:`sftl_dask.models.trees.LGBM.fit_dask` trains on.

    Raises
    ------
    ValueError
        If the table is missing, lacks a column, has a non-finite or out-of-range input (the message names
        the file and column) or fewer rows than partitions, no training rows remain after the holdout, or
        ``partitions < 1``, or the client has no workers.
    """
    if partitions is not None and partitions < 1:
        raise ValueError(f"read_simulation_on_workers: partitions must be >= 1, got {partitions}")
    path = Path(sim_path)
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:  # the partitions are pinned to workers: there must be some
        raise ValueError(f"read_simulation_on_workers: the Dask client ({client.scheduler.address}) has no workers")
    try:  # at least one partition per file
        plan = plan_row_ranges(path, max(partitions or len(workers), len(simulation_parts(path))))
    except ValueError as exc:
        raise ValueError(f"read_simulation_on_workers: {exc}") from None
    holdout = np.unique(np.asarray(list(holdout_profiles), dtype=np.int64))
    load = dict.fromkeys(workers, 0)
    placed: list[tuple[list[RowRange], str]] = []
    for ranges in sorted(plan, key=lambda rs: -sum(r.stop - r.start for r in rs)):  # most rows first
        w = min(workers, key=lambda a: load[a])
        load[w] += sum(r.stop - r.start for r in ranges)
        placed.append((list(ranges), w))
    parts = [client.submit(read_training_rows, ranges, holdout, workers=[w], allow_other_workers=False, pure=False)
             for ranges, w in placed]
    wait(parts)
    for fut in parts:
        if fut.status == "error":
            try:
                fut.result()  # raises the worker's error here
            except ValueError as exc:
                raise ValueError(f"read_simulation_on_workers: {exc}") from None
    sizes = client.gather([client.submit(_part_sizes, f, workers=[w], pure=False)
                           for f, (_, w) in zip(parts, placed, strict=True)])
    if not any(n for n, _ in sizes):
        raise ValueError(f"read_simulation_on_workers: {path}: no training rows left after holding out {holdout.size} "
                         f"profile(s)")
    return WorkerRows(parts, [w for _, w in placed], [(int(a), int(b)) for a, b in sizes], str(path))


def _part_sizes(part: tuple[np.ndarray, ...]) -> tuple[int, int]:
    return int(part[1].shape[0]), int(part[3].shape[0])
