"""Strategic fine-tuning strategies for the torch models: Full, Head, Gradual, Adapter, LoRA.

A strategy is a small object applied to a model (:class:`~sftl_dask.models.torch_models.LSTModel`
or anything exposing ``head``, ``blocks`` and ``layer_groups()``):

- ``apply(model) -> model`` sets ``requires_grad`` (and injects adapter / LoRA modules in place,
  by walking ``named_modules`` and replacing the targets, as peft does);
- ``param_groups(model, base_lr)`` gives the optimiser's parameter groups (discriminative learning
  rates for Gradual);
- ``step(epoch)`` is called by the trainer at the start of every epoch (Gradual unfreezes there);
- ``export_model(model)`` returns the model to script: LoRA merged into plain ``nn.Linear`` /
  ``nn.Conv1d`` (a copy; the tuned model is left as is), adapters kept (they cannot be merged
  exactly through the non-linearity; the scripted graph carries them).

``trainable_parameters(model)`` counts the parameters that train.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sftl_dask.models.torch_models import Block

__all__ = [
    "STRATEGIES",
    "Adapter",
    "AdapterModule",
    "Full",
    "Gradual",
    "Head",
    "LoRA",
    "LoRAConv1d",
    "LoRALinear",
    "Strategy",
    "make_strategy",
    "merge_and_unload",
    "trainable_parameters",
    "unfrozen_groups",
]


def trainable_parameters(model: nn.Module) -> int:
    """Number of scalar parameters with ``requires_grad`` set."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _set_trainable(params: Iterable[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def _require(model: nn.Module, *attrs: str) -> None:
    missing = [a for a in attrs if not hasattr(model, a)]
    if missing:
        raise TypeError(f"{type(model).__name__} has no {', '.join(missing)}: not a fine-tunable LST model")


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


class Strategy:
    """Base: every parameter trains with one learning rate; nothing is injected."""

    name = "full"

    def apply(self, model: nn.Module) -> nn.Module:
        """Set which parameters train (in place) and return the model."""
        _set_trainable(model.parameters(), True)
        return model

    def param_groups(self, model: nn.Module, base_lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups: the trainable parameters at ``base_lr``."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": base_lr, "name": "all"}]

    def step(self, epoch: int) -> None:
        """Called at the start of each epoch (0-based); no-op except for Gradual."""

    def export_model(self, model: nn.Module) -> nn.Module:
        """The model to script and export (identity, except LoRA which merges a copy)."""
        return model

    def trainable_parameters(self, model: nn.Module) -> int:
        """Number of parameters that train under this strategy once applied."""
        return trainable_parameters(model)

    def describe(self) -> dict[str, Any]:
        """Name and settings, JSON-serialisable (for the model card)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Full(Strategy):
    """Every parameter trains."""

    name = "full"


class Head(Strategy):
    """Only ``model.head`` trains; the backbone (embedding, blocks) is frozen."""

    name = "head"

    def apply(self, model: nn.Module) -> nn.Module:
        _require(model, "head")
        _set_trainable(model.parameters(), False)
        _set_trainable(model.head.parameters(), True)
        return model


def unfrozen_groups(epoch: int, n_groups: int, epochs_per_group: int) -> int:
    """How many layer groups, counted from the head, train at ``epoch`` (0-based).

    ``min(n_groups, ceil((epoch + 1) / epochs_per_group))``: the head alone for the first
    ``epochs_per_group`` epochs, then one more group every ``epochs_per_group`` epochs.

    Raises
    ------
    ValueError
        If ``epoch < 0``, ``n_groups < 1`` or ``epochs_per_group < 1``.
    """
    if epoch < 0 or n_groups < 1 or epochs_per_group < 1:
        raise ValueError(f"unfrozen_groups: need epoch >= 0, n_groups >= 1, epochs_per_group >= 1; "
                         f"got {epoch}, {n_groups}, {epochs_per_group}")
    return min(n_groups, math.ceil((epoch + 1) / epochs_per_group))


class Gradual(Strategy):
    """Gradual unfreezing from the head down with discriminative learning rates (ULMFiT style).

    At epoch ``e`` the top :func:`unfrozen_groups` ``(e, n_groups, epochs_per_group)`` of
    ``model.layer_groups()`` train. Group ``g`` (0 = input side, ``n-1`` = head) learns at
    ``base_lr / lr_decay ** (n - 1 - g)``.

    Parameters
    ----------
    epochs_per_group : int
        Epochs between two unfreezing steps.
    lr_decay : float
        Ratio between the learning rates of neighbouring groups (>= 1).
    """

    name = "gradual"

    def __init__(self, epochs_per_group: int = 2, lr_decay: float = 2.6) -> None:
        if int(epochs_per_group) < 1:
            raise ValueError(f"Gradual: epochs_per_group must be >= 1, got {epochs_per_group}")
        if not lr_decay >= 1.0:
            raise ValueError(f"Gradual: lr_decay must be >= 1, got {lr_decay}")
        self.epochs_per_group = int(epochs_per_group)
        self.lr_decay = float(lr_decay)
        self._groups: list[nn.Module] = []

    def _layer_groups(self, model: nn.Module) -> list[nn.Module]:
        _require(model, "layer_groups")
        groups = list(model.layer_groups())
        covered = {id(p) for g in groups for p in g.parameters()}
        rest = [p for p in model.parameters() if id(p) not in covered]
        if rest:
            raise ValueError(f"Gradual: {type(model).__name__}.layer_groups() leaves {len(rest)} parameter tensors out")
        return groups

    def apply(self, model: nn.Module) -> nn.Module:
        self._groups = self._layer_groups(model)
        self.step(0)
        return model

    def step(self, epoch: int) -> None:
        if not self._groups:
            raise RuntimeError("Gradual.step called before Gradual.apply(model)")
        n = len(self._groups)
        k = unfrozen_groups(epoch, n, self.epochs_per_group)
        for i, group in enumerate(self._groups):
            _set_trainable(group.parameters(), i >= n - k)

    def group_lrs(self, n_groups: int, base_lr: float) -> list[float]:
        """Learning rate of each group, input side first (the head gets ``base_lr``)."""
        return [base_lr / self.lr_decay ** (n_groups - 1 - g) for g in range(n_groups)]

    def param_groups(self, model: nn.Module, base_lr: float) -> list[dict[str, Any]]:
        # every group is in the optimiser from the start; frozen ones have no gradient and are skipped
        groups = self._groups or self._layer_groups(model)
        lrs = self.group_lrs(len(groups), base_lr)
        return [{"params": list(g.parameters()), "lr": lr, "name": f"group{i}"}
                for i, (g, lr) in enumerate(zip(groups, lrs, strict=True))]

    def trainable_parameters(self, model: nn.Module) -> int:
        """Parameters that train by the end of the schedule (all groups)."""
        return sum(p.numel() for g in self._layer_groups(model) for p in g.parameters())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "epochs_per_group": self.epochs_per_group, "lr_decay": self.lr_decay}


class AdapterModule(nn.Module):
    """Bottleneck adapter ``x + up(act(down(x)))`` along ``feature_dim``; ``up`` starts at zero (identity).

    The module :class:`Adapter` inserts after each block; public so that an exported model can be checked for
    adapters (:mod:`sftl_dask.models.artifact`).
    """

    def __init__(self, dim: int, bottleneck: int, feature_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(self.feature_dim, -1)
        return x + self.up(self.act(self.down(h))).transpose(self.feature_dim, -1)


class _AdaptedBlock(nn.Module):
    """A backbone block followed by its adapter."""

    def __init__(self, block: Block, adapter: AdapterModule) -> None:
        super().__init__()
        self.block = block
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.block(x))


class Adapter(Strategy):
    """Bottleneck adapters after every backbone block; the backbone is frozen.

    Walks ``named_modules`` and replaces each :class:`~sftl_dask.models.torch_models.Block` by the
    block followed by ``Linear(d → bottleneck) → GELU → Linear(bottleneck → d)`` with a residual; the
    up-projection is zero-initialised, so the model's outputs are unchanged at injection. Applying
    to a model that already has adapters reuses them.

    Parameters
    ----------
    bottleneck : int
        Adapter width ``r``.
    train_head : bool
        Also train ``model.head``.
    """

    name = "adapter"

    def __init__(self, bottleneck: int = 8, train_head: bool = False) -> None:
        if int(bottleneck) < 1:
            raise ValueError(f"Adapter: bottleneck must be >= 1, got {bottleneck}")
        self.bottleneck = int(bottleneck)
        self.train_head = bool(train_head)

    def apply(self, model: nn.Module) -> nn.Module:
        targets = [(name, m) for name, m in model.named_modules() if isinstance(m, Block)]
        if not targets:
            raise ValueError(f"Adapter: {type(model).__name__} has no backbone blocks to adapt")
        for name, block in targets:
            parent, child = _parent(model, name)
            if isinstance(parent, _AdaptedBlock):
                continue  # adapters already there
            setattr(parent, child, _AdaptedBlock(block, AdapterModule(block.out_features, self.bottleneck,
                                                                 block.feature_dim)))
        _set_trainable(model.parameters(), False)
        for m in model.modules():
            if isinstance(m, AdapterModule):
                _set_trainable(m.parameters(), True)
        if self.train_head:
            _require(model, "head")
            _set_trainable(model.head.parameters(), True)
        return model

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "bottleneck": self.bottleneck, "train_head": self.train_head}


class LoRALinear(nn.Module):
    """``nn.Linear`` with a low-rank update: ``W x + b + (alpha / r) · B A x``; ``W``, ``b`` frozen.

    ``A`` (r × in) starts random (Kaiming uniform), ``B`` (out × r) at zero, so the layer starts
    equal to the base layer.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = float(alpha) / rank
        _set_trainable(base.parameters(), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) · B A``, shape of the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``B A`` folded into its weight."""
        out = copy.deepcopy(self.base)
        with torch.no_grad():
            out.weight.add_(self.delta_weight())
        return out


class LoRAConv1d(nn.Module):
    """``nn.Conv1d`` (``groups=1``, integer padding) with a low-rank update of its weight.

    The update is ``(alpha / r) · B (A reshaped to r × in·k)``, folded into an effective kernel at
    every call; ``merged()`` folds it once into a plain ``nn.Conv1d``.
    """

    def __init__(self, base: nn.Conv1d, rank: int, alpha: float) -> None:
        super().__init__()
        if base.groups != 1 or isinstance(base.padding, str) or base.padding_mode != "zeros":
            raise ValueError("LoRA: Conv1d targets need groups=1, integer padding and zero padding mode")
        self.base = base
        k = base.kernel_size[0]
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_channels * k))
        self.lora_B = nn.Parameter(torch.zeros(base.out_channels, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = float(alpha) / rank
        self.stride = int(base.stride[0])
        self.padding = int(base.padding[0])
        self.dilation = int(base.dilation[0])
        _set_trainable(base.parameters(), False)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) · B A`` reshaped to the base kernel."""
        return ((self.lora_B @ self.lora_A) * self.scaling).view(self.base.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.base.weight + self.delta_weight(), self.base.bias, self.stride, self.padding,
                        self.dilation)

    def merged(self) -> nn.Conv1d:
        """A plain ``nn.Conv1d`` with the update folded into its kernel."""
        out = copy.deepcopy(self.base)
        with torch.no_grad():
            out.weight.add_(self.delta_weight())
        return out


_LORA_TYPES = (LoRALinear, LoRAConv1d)
_LORA_WRAP = {nn.Linear: LoRALinear, nn.Conv1d: LoRAConv1d}


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base layer and put the plain layer back (in place).

    The result has the structure of the model before LoRA was applied (plain ``nn.Linear`` /
    ``nn.Conv1d``), computes the same function (to float32 rounding), and returns ``model``.
    """
    for name, m in list(model.named_modules()):
        if isinstance(m, _LORA_TYPES):
            parent, child = _parent(model, name)
            setattr(parent, child, m.merged())
    return model


def _has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, _LORA_TYPES) for m in model.modules())


class LoRA(Strategy):
    """Low-rank adaptation of the chosen layers; only the ``A``, ``B`` factors train.

    Walks ``named_modules`` and replaces every target ``nn.Linear`` (or ``nn.Conv1d``) by a
    :class:`LoRALinear` (:class:`LoRAConv1d`) holding the frozen layer. A target matches by layer
    type name (``"Linear"``, ``"Conv1d"``) or by module name (``"q"`` matches ``blocks.0.attn.q``).
    A model that already carries LoRA layers has them merged first, then gets fresh ones.
    :meth:`export_model` returns a merged copy, identical in structure to the base model.

    Parameters
    ----------
    rank : int
        ``r``, the rank of ``B A``.
    alpha : float
        Scale; the update is ``(alpha / r) · B A``.
    targets : sequence of str
        Layer type names and/or module names to adapt. The default adapts every ``nn.Linear`` and
        ``nn.Conv1d`` (the CNN's backbone is convolutional: with ``("Linear",)`` alone only its
        head would be adapted).
    train_head : bool
        Train ``model.head`` in full instead of adapting it with LoRA.
    """

    name = "lora"

    def __init__(self, rank: int = 4, alpha: float = 8.0, targets: Iterable[str] = ("Linear", "Conv1d"),
                 train_head: bool = False) -> None:
        if int(rank) < 1:
            raise ValueError(f"LoRA: rank must be >= 1, got {rank}")
        if not alpha > 0:
            raise ValueError(f"LoRA: alpha must be > 0, got {alpha}")
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.targets = tuple([targets] if isinstance(targets, str) else targets)
        if not self.targets:
            raise ValueError("LoRA: targets must name at least one layer type or module")
        self.train_head = bool(train_head)

    def _is_target(self, name: str, module: nn.Module) -> bool:
        if type(module) not in _LORA_WRAP:
            return False
        return any(t == type(module).__name__ or name == t or name.endswith("." + t) for t in self.targets)

    def apply(self, model: nn.Module) -> nn.Module:
        if _has_lora(model):
            merge_and_unload(model)
        head_ids = {id(m) for m in model.head.modules()} if (self.train_head and hasattr(model, "head")) else set()
        targets = [(n, m) for n, m in model.named_modules() if self._is_target(n, m) and id(m) not in head_ids]
        if not targets:
            raise ValueError(f"LoRA: no Linear/Conv1d layer of {type(model).__name__} matches targets {self.targets}")
        for name, m in targets:
            parent, child = _parent(model, name)
            setattr(parent, child, _LORA_WRAP[type(m)](m, self.rank, self.alpha))
        _set_trainable(model.parameters(), False)
        for m in model.modules():
            if isinstance(m, _LORA_TYPES):
                _set_trainable([m.lora_A, m.lora_B], True)
        if self.train_head:
            _require(model, "head")
            _set_trainable(model.head.parameters(), True)
        return model

    def export_model(self, model: nn.Module) -> nn.Module:
        """A merged copy of ``model`` (LoRA folded into plain layers); ``model`` is unchanged."""
        return merge_and_unload(copy.deepcopy(model))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "rank": self.rank, "alpha": self.alpha, "targets": list(self.targets),
                "train_head": self.train_head}


#: Strategy names and classes.
STRATEGIES: dict[str, type[Strategy]] = {"full": Full, "head": Head, "gradual": Gradual, "adapter": Adapter,
                                         "lora": LoRA}


def make_strategy(name: str, **kwargs: Any) -> Strategy:
    """A strategy by name (case-insensitive), e.g. ``make_strategy("lora", rank=8)``.

    Raises
    ------
    ValueError
        If the name is unknown (the message lists the valid names).
    TypeError
        If a keyword is not a setting of that strategy.
    """
    try:
        cls = STRATEGIES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown fine-tuning strategy {name!r}; choose from {', '.join(STRATEGIES)}") from None
    return cls(**kwargs)
