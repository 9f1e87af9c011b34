"""Torch LST regressors: DNN (MLP), TrF (feature-token Transformer), CNN (1-D convolution over features).

Every model is ``Normalize → core → de-normalise``: it takes the raw feature matrix of
:func:`sftl_dask.features.feature_matrix` (K, g cm-2, unitless, in :data:`~sftl_dask.features.FEATURES`
order) and returns LST in K. The normalisation statistics (from the pre-training table) live in
buffers, so a scripted model carries them into the artifact.

Each model exposes

- ``blocks``: the backbone blocks (instances of :class:`Block`), where Adapter inserts its modules;
- ``head``: the output block (Head fine-tuning trains only this);
- ``layer_groups()``: modules ordered from input to head, for Gradual unfreezing;
- ``config()``: the constructor arguments (JSON-serialisable), for the model card.

All are ``torch.jit.script``-able, including after adapters or LoRA layers are injected.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn

__all__ = ["CNN", "DNN", "Block", "LSTModel", "Normalize", "TrF"]

#: Defaults for the target de-normalisation when no table statistics are given (K): a typical
#: land surface temperature and its spread over the simulation table's range.
_DEFAULT_LST_MEAN_K = 290.0
_DEFAULT_LST_STD_K = 15.0

_ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"activation {name!r} unknown; choose from {', '.join(_ACTIVATIONS)}") from None


def _stat_vector(name: str, values: ArrayLike | None, n: int, fill: float, *, positive: bool) -> torch.Tensor:
    if values is None:
        return torch.full((n,), fill, dtype=torch.float32)
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected {n} values (one per feature), got shape {np.shape(values)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: non-finite values")
    if positive and np.any(arr <= 0):
        raise ValueError(f"{name}: standard deviations must be > 0 (feature index {int(np.argmin(arr))})")
    return torch.as_tensor(arr, dtype=torch.float32)


class Normalize(nn.Module):
    """Feature standardisation and target de-normalisation, stored as buffers.

    Parameters
    ----------
    n_features : int
        Number of input features.
    feature_mean, feature_std : array-like of shape (n_features,), optional
        Per-feature mean and standard deviation of the pre-training table, in the features' units
        (K, g cm-2, ...). ``None`` means identity (mean 0, std 1).
    target_mean, target_std : float
        Mean and standard deviation of the training LST (K); the core predicts
        ``(lst - target_mean) / target_std``.

    Raises
    ------
    ValueError
        If a statistic has the wrong length, is non-finite, or a standard deviation is <= 0.
    """

    def __init__(
        self,
        n_features: int,
        feature_mean: ArrayLike | None = None,
        feature_std: ArrayLike | None = None,
        target_mean: float = _DEFAULT_LST_MEAN_K,
        target_std: float = _DEFAULT_LST_STD_K,
    ) -> None:
        super().__init__()
        if not (np.isfinite(target_mean) and np.isfinite(target_std) and target_std > 0):
            raise ValueError(f"target statistics must be finite with std > 0, got {target_mean}, {target_std}")
        self.register_buffer("x_mean", _stat_vector("norm_mean", feature_mean, n_features, 0.0, positive=False))
        self.register_buffer("x_std", _stat_vector("norm_std", feature_std, n_features, 1.0, positive=True))
        self.register_buffer("y_mean", torch.tensor(float(target_mean), dtype=torch.float32))
        self.register_buffer("y_std", torch.tensor(float(target_std), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised features: ``(x - mean) / std``, shape unchanged."""
        return (x - self.x_mean) / self.x_std

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        """LST in K from the core's standardised output."""
        return y * self.y_std + self.y_mean


class Block(nn.Module):
    """A backbone block: maps a tensor to one of the same shape, features along ``feature_dim``.

    Subclasses set ``out_features`` (int, the size of that axis, where an adapter's bottleneck is
    attached) and ``feature_dim`` (int, ``-1`` or ``1``) in ``__init__``.
    """


class _MLPBlock(Block):
    def __init__(self, n_in: int, n_out: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.act = _activation(activation)
        self.drop = nn.Dropout(dropout)
        self.out_features = n_out
        self.feature_dim = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.linear(x)))


class _FeatureEmbedding(nn.Module):
    """Each scalar feature → a ``d``-vector: ``z_j * w_j + e_j`` (per-feature linear embedding + feature embedding).

    Output shape ``(batch, n_features + n_cls, d)``; with ``cls`` a learned CLS token is prepended.
    """

    def __init__(self, n_features: int, d: int, cls: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, d) / d**0.5)
        self.feature_embedding = nn.Parameter(torch.randn(n_features, d) * 0.02)
        # a (1, 0, d) parameter when no CLS token is used keeps the scripted graph free of Optionals
        self.cls = nn.Parameter(torch.randn(1, 1 if cls else 0, d) * 0.02)
        self.use_cls = cls

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        tokens = z.unsqueeze(-1) * self.weight + self.feature_embedding
        if self.use_cls:
            tokens = torch.cat([self.cls.expand(z.size(0), -1, -1), tokens], dim=1)
        return tokens


class _SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model ({d}) must be divisible by heads ({heads})")
        self.heads = heads
        self.d_head = d // heads
        self.dropout = dropout
        # separate projections so that LoRA can target q / k / v / out by name
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), x.size(1), self.heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x)),
                                           dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(x.size(0), x.size(1), -1))


class _TransformerBlock(Block):
    """Pre-norm Transformer encoder layer over feature tokens."""

    def __init__(self, d: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = _SelfAttention(d, heads, dropout)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_mult * d, d))
        self.drop = nn.Dropout(dropout)
        self.out_features = d
        self.feature_dim = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.ff(self.ln2(x)))


class _ConvBlock(Block):
    """Residual 1-D convolution over the feature axis: ``x + act(conv(x))``, layout ``(batch, channels, features)``."""

    def __init__(self, channels: int, kernel: int, activation: str, dropout: float) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 1, got {kernel}")
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        self.act = _activation(activation)
        self.drop = nn.Dropout(dropout)
        self.out_features = channels
        self.feature_dim = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.act(self.conv(x)))


class LSTModel(nn.Module):
    """Base of the torch regressors: normalisation, ``n_features``, parameter groups and config."""

    def __init__(self, n_features: int, norm_mean: ArrayLike | None, norm_std: ArrayLike | None,
                 target_mean: float, target_std: float) -> None:
        super().__init__()
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        self.n_features = int(n_features)
        self.norm = Normalize(self.n_features, norm_mean, norm_std, target_mean, target_std)
        self._config: dict[str, Any] = {}

    def layer_groups(self) -> list[nn.Module]:
        """Modules from input to head (disjoint, together holding every parameter)."""
        return [*self._stem(), *self.blocks, self.head]

    def _stem(self) -> list[nn.Module]:
        return []

    def config(self) -> dict[str, Any]:
        """Architecture name and constructor arguments (without the statistics), JSON-serialisable."""
        return {"architecture": type(self).__name__, "n_features": self.n_features, **self._config}


class DNN(LSTModel):
    """Multi-layer perceptron: ``Normalize → [Linear → act → dropout] × len(hidden) → Linear → LST (K)``.

    Parameters
    ----------
    n_features : int
        Number of input features (12 for :data:`~sftl_dask.features.FEATURES`).
    norm_mean, norm_std : array-like of shape (n_features,), optional
        Feature statistics of the pre-training table (feature units).
    target_mean, target_std : float
        LST statistics of the pre-training table (K).
    hidden : sequence of int
        Hidden layer widths, input to output.
    activation : {"silu", "gelu", "relu"}
    dropout : float
        Dropout after each hidden layer (0 disables).
    """

    def __init__(self, n_features: int, norm_mean: ArrayLike | None = None, norm_std: ArrayLike | None = None, *,
                 target_mean: float = _DEFAULT_LST_MEAN_K, target_std: float = _DEFAULT_LST_STD_K,
                 hidden: Sequence[int] = (128, 64, 32), activation: str = "silu", dropout: float = 0.0) -> None:
        super().__init__(n_features, norm_mean, norm_std, target_mean, target_std)
        widths = [self.n_features, *[int(h) for h in hidden]]
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden!r}")
        self.blocks = nn.ModuleList(_MLPBlock(a, b, activation, dropout) for a, b in itertools.pairwise(widths))
        self.head = nn.Linear(widths[-1], 1)
        self._config = {"hidden": widths[1:], "activation": activation, "dropout": dropout}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """LST (K), shape ``x.shape[:-1]``, from raw features ``x`` of shape ``(..., n_features)``."""
        h = self.norm(x)
        for block in self.blocks:
            h = block(h)
        return self.norm.denormalize(self.head(h).squeeze(-1))


class TrF(LSTModel):
    """Feature-token Transformer (FT-Transformer style).

    Each standardised scalar feature becomes a token ``z_j * w_j + e_j`` (per-feature linear embedding
    plus feature embedding), a CLS token is prepended (``pooling="cls"``), ``layers`` pre-norm encoder
    blocks mix the tokens, the CLS token (or the token mean) goes through the head MLP
    ``LayerNorm → Linear → GELU → Linear``.

    Parameters
    ----------
    n_features, norm_mean, norm_std, target_mean, target_std
        As :class:`DNN`.
    d_model : int
        Token width.
    heads : int
        Attention heads (must divide ``d_model``).
    layers : int
        Encoder blocks.
    ff_mult : int
        Feed-forward width as a multiple of ``d_model``.
    dropout : float
    pooling : {"cls", "mean"}
    linear_skip : bool
        Add a linear path from the standardised features to the output (part of the stem layer group),
        so the tokens learn the non-linear correction to a split-window-like linear retrieval.
    """

    def __init__(self, n_features: int, norm_mean: ArrayLike | None = None, norm_std: ArrayLike | None = None, *,
                 target_mean: float = _DEFAULT_LST_MEAN_K, target_std: float = _DEFAULT_LST_STD_K,
                 d_model: int = 32, heads: int = 2, layers: int = 2, ff_mult: int = 2, dropout: float = 0.0,
                 pooling: str = "cls", linear_skip: bool = True) -> None:
        super().__init__(n_features, norm_mean, norm_std, target_mean, target_std)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.tokenizer = _FeatureEmbedding(self.n_features, d_model, pooling == "cls")
        self.blocks = nn.ModuleList(_TransformerBlock(d_model, heads, ff_mult, dropout) for _ in range(layers))
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(),
                                  nn.Linear(d_model, 1))
        self.cls_pooling = pooling == "cls"
        # an optional linear path from the standardised features (a split-window-like linear retrieval) that
        # the tokens refine; a (n_features -> 0) layer when off keeps the scripted graph uniform
        self.skip = nn.Linear(self.n_features, 1 if linear_skip else 0, bias=False)
        self._config = {"d_model": d_model, "heads": heads, "layers": layers, "ff_mult": ff_mult,
                        "dropout": dropout, "pooling": pooling, "linear_skip": linear_skip}

    def _stem(self) -> list[nn.Module]:
        return [self.tokenizer, self.skip]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """LST (K), shape ``(batch,)``, from raw features of shape ``(batch, n_features)``."""
        z = self.norm(x)
        h = self.tokenizer(z)
        for block in self.blocks:
            h = block(h)
        pooled = h[:, 0] if self.cls_pooling else h.mean(dim=1)
        out = self.head(pooled).squeeze(-1) + self.skip(z).sum(dim=-1)
        return self.norm.denormalize(out)


class CNN(LSTModel):
    """1-D convolutional network over the feature axis.

    A per-feature embedding lifts each standardised feature to ``channels`` values (so that the
    convolutions know which feature sits where; global pooling would otherwise erase it), residual
    ``Conv1d`` blocks mix neighbouring features, global mean and max pooling over the feature axis
    feed the head MLP ``Linear(2·channels → hidden) → act → Linear(hidden → 1)``.

    Parameters
    ----------
    n_features, norm_mean, norm_std, target_mean, target_std
        As :class:`DNN`.
    channels : int
        Convolution channels.
    n_blocks : int
        Residual convolution blocks.
    kernel : int
        Kernel size along the feature axis (odd).
    hidden : int
        Head hidden width.
    activation : {"silu", "gelu", "relu"}
    dropout : float
    """

    def __init__(self, n_features: int, norm_mean: ArrayLike | None = None, norm_std: ArrayLike | None = None, *,
                 target_mean: float = _DEFAULT_LST_MEAN_K, target_std: float = _DEFAULT_LST_STD_K,
                 channels: int = 32, n_blocks: int = 3, kernel: int = 3, hidden: int = 32, activation: str = "gelu",
                 dropout: float = 0.0) -> None:
        super().__init__(n_features, norm_mean, norm_std, target_mean, target_std)
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        self.stem = _FeatureEmbedding(self.n_features, channels, cls=False)
        self.blocks = nn.ModuleList(_ConvBlock(channels, kernel, activation, dropout) for _ in range(n_blocks))
        self.head = nn.Sequential(nn.Linear(2 * channels, hidden), _activation(activation), nn.Linear(hidden, 1))
        self._config = {"channels": channels, "n_blocks": n_blocks, "kernel": kernel, "hidden": hidden,
                        "activation": activation, "dropout": dropout}

    def _stem(self) -> list[nn.Module]:
        return [self.stem]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """LST (K), shape ``(batch,)``, from raw features of shape ``(batch, n_features)``."""
        h = self.stem(self.norm(x)).transpose(1, 2)  # (batch, channels, features)
        for block in self.blocks:
            h = block(h)
        pooled = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=-1)
        return self.norm.denormalize(self.head(pooled).squeeze(-1))
