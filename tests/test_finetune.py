"""Fine-tuning strategies: exact trainable sets, Gradual's schedule, adapters and LoRA (zero-init, merge)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from helpers import synthetic_lst
from torch import nn

from sftl_dask.models import build_model
from sftl_dask.models.finetune import (
    STRATEGIES,
    Adapter,
    Full,
    Gradual,
    Head,
    LoRA,
    LoRAConv1d,
    LoRALinear,
    make_strategy,
    merge_and_unload,
    trainable_parameters,
    unfrozen_groups,
)
from sftl_dask.models.trainer import fit_torch, predict_torch

TORCH = ("dnn", "trf", "cnn")
_synthetic = synthetic_lst

def _model(name: str, seed: int = 0) -> nn.Module:
    x, y = _synthetic(500)
    torch.manual_seed(seed)
    return build_model(name, 12, x.mean(axis=0), x.std(axis=0), target_mean=float(y.mean()),
                       target_std=float(y.std()))


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _head_names(model: nn.Module) -> set[str]:
    ids = {id(p) for p in model.head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _perturb(params: list[nn.Parameter], seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _script(model: nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(model)


@pytest.mark.parametrize("name", TORCH)
def test_full_trains_everything(name):
    m = Full().apply(_model(name))
    assert _trainable(m) == {n for n, _ in m.named_parameters()}
    assert trainable_parameters(m) == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", TORCH)
def test_head_trains_only_the_head(name):
    m = Head().apply(_model(name))
    assert _trainable(m) == _head_names(m) != set()
    assert all(n.startswith("head.") for n in _trainable(m))


@pytest.mark.parametrize("name", TORCH)
@pytest.mark.parametrize("train_head", [False, True])
def test_adapter_trains_only_adapters_and_optionally_the_head(name, train_head):
    m = Adapter(bottleneck=8, train_head=train_head).apply(_model(name))
    adapters = {n for n, _ in m.named_parameters() if ".adapter." in n}
    n_blocks = len(m.blocks)
    assert len(adapters) == 4 * n_blocks  # down/up weight and bias per block
    expected = adapters | (_head_names(m) if train_head else set())
    assert _trainable(m) == expected


@pytest.mark.parametrize("name", TORCH)
def test_adapters_start_as_identity(name):
    base = _model(name).eval()
    x, _ = _synthetic(200, seed=1)
    ref = predict_torch(base, x)
    adapted = Adapter().apply(copy.deepcopy(base))
    assert np.array_equal(predict_torch(adapted, x), ref)
    # re-applying reuses the adapters instead of stacking more
    n = trainable_parameters(adapted)
    assert trainable_parameters(Adapter().apply(adapted)) == n


@pytest.mark.parametrize("name", TORCH)
@pytest.mark.parametrize("train_head", [False, True])
def test_lora_trains_only_a_and_b_and_optionally_the_head(name, train_head):
    m = LoRA(rank=4, alpha=8, train_head=train_head).apply(_model(name))
    lora = {n for n, _ in m.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert any(n.startswith("blocks.") for n in lora)  # the backbone is adapted, not only the head
    expected = lora | (_head_names(m) if train_head else set())
    assert _trainable(m) == expected
    for mod in m.modules():
        if isinstance(mod, LoRAConv1d):
            assert not mod.base.weight.requires_grad and torch.count_nonzero(mod.lora_B) == 0
        if isinstance(mod, LoRALinear):
            assert mod.lora_A.shape == (4, mod.base.in_features)
            assert mod.lora_B.shape == (mod.base.out_features, 4)
            assert not mod.base.weight.requires_grad
            assert torch.count_nonzero(mod.lora_B) == 0


@pytest.mark.parametrize("name", TORCH)
def test_lora_merge_is_equivalent_and_restores_base_structure(name):
    base = _model(name).eval()
    structure = [(n, type(mod)) for n, mod in base.named_modules()]
    x, _ = _synthetic(300, seed=2)
    m = LoRA(rank=4, alpha=8).apply(copy.deepcopy(base))
    assert np.array_equal(predict_torch(m, x), predict_torch(base, x))  # B = 0 at init
    _perturb([p for p in m.parameters() if p.requires_grad])
    before = predict_torch(m, x)
    assert np.abs(before - predict_torch(base, x)).max() > 1e-3  # the update does something
    merged = LoRA().export_model(m)
    assert any(isinstance(mod, LoRALinear) for mod in m.modules())  # export_model leaves the tuned model as is
    assert [(n, type(mod)) for n, mod in merged.named_modules()] == structure
    assert np.abs(predict_torch(merged, x) - before).max() <= 1e-4  # float32, values ~300 K
    # in float64 the merge is exact to 1e-5 K
    m64, merged64 = copy.deepcopy(m).double().eval(), copy.deepcopy(merged).double().eval()
    with torch.no_grad():
        xt = torch.from_numpy(x.astype(np.float64))
        assert torch.allclose(m64(xt), merged64(xt), atol=1e-5, rtol=0)


def test_lora_targets_by_module_name_and_conv1d():
    m = LoRA(targets=("q", "v")).apply(_model("trf"))
    wrapped = sorted(n for n, mod in m.named_modules() if isinstance(mod, LoRALinear))
    assert wrapped == ["blocks.0.attn.q", "blocks.0.attn.v", "blocks.1.attn.q", "blocks.1.attn.v"]
    assert not any(isinstance(mod, LoRAConv1d) for mod in LoRA(targets=("Linear",)).apply(_model("cnn")).modules())
    cnn = LoRA(targets=("Conv1d",)).apply(_model("cnn"))
    assert sum(isinstance(mod, LoRAConv1d) for mod in cnn.modules()) == 3
    _perturb([p for p in cnn.parameters() if p.requires_grad])
    x, _ = _synthetic(100)
    before = predict_torch(cnn, x)
    merged = merge_and_unload(copy.deepcopy(cnn))
    assert not any(isinstance(mod, LoRAConv1d) for mod in merged.modules())
    assert np.abs(predict_torch(merged, x) - before).max() <= 1e-4
    with pytest.raises(ValueError, match="no Linear/Conv1d"):
        LoRA(targets=("nothing",)).apply(_model("dnn"))


def test_lora_reapplied_merges_the_previous_update_first():
    m = LoRA().apply(_model("dnn"))
    _perturb([p for p in m.parameters() if p.requires_grad])
    x, _ = _synthetic(100)
    before = predict_torch(m, x)
    m = LoRA().apply(m)
    assert not any(isinstance(mod.base, LoRALinear) for mod in m.modules() if isinstance(mod, LoRALinear))
    assert np.abs(predict_torch(m, x) - before).max() <= 1e-4


def test_unfrozen_groups_schedule():
    # epochs_per_group = 2, four groups: head alone for 2 epochs, then one more group every 2 epochs
    assert [unfrozen_groups(e, 4, 2) for e in range(10)] == [1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    assert [unfrozen_groups(e, 3, 1) for e in range(5)] == [1, 2, 3, 3, 3]
    assert unfrozen_groups(0, 1, 5) == 1
    with pytest.raises(ValueError):
        unfrozen_groups(-1, 4, 2)
    with pytest.raises(ValueError):
        unfrozen_groups(0, 4, 0)


@pytest.mark.parametrize("name", TORCH)
def test_gradual_unfreezes_from_the_head_down(name):
    m = _model(name)
    strat = Gradual(epochs_per_group=2)
    strat.apply(m)
    groups = m.layer_groups()
    n = len(groups)
    for epoch in range(2 * n + 2):
        strat.step(epoch)
        k = unfrozen_groups(epoch, n, 2)
        flags = [all(p.requires_grad for p in g.parameters()) for g in groups]
        frozen = [not any(p.requires_grad for p in g.parameters()) for g in groups]
        assert flags == [i >= n - k for i in range(n)]
        assert frozen == [i < n - k for i in range(n)]
    assert strat.trainable_parameters(m) == sum(p.numel() for p in m.parameters())


def test_gradual_discriminative_learning_rates():
    m = _model("dnn")
    strat = Gradual(epochs_per_group=1, lr_decay=2.6)
    strat.apply(m)
    groups = strat.param_groups(m, 1e-3)
    assert len(groups) == 4
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 / 2.6**3, 1e-3 / 2.6**2, 1e-3 / 2.6, 1e-3])
    assert groups[-1]["params"] == list(m.head.parameters())


def test_gradual_training_leaves_not_yet_unfrozen_groups_untouched():
    x, y = _synthetic(400, seed=3, bias_k=2.0)
    m = _model("dnn")
    start = copy.deepcopy(m.state_dict())
    strat = Gradual(epochs_per_group=1)
    strat.apply(m)
    fit_torch(m, x, y, strategy=strat, epochs=2, batch_size=64, lr=1e-3, seed=0)  # epochs 0, 1 → top 2 groups
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, start[k])}
    assert changed == {"blocks.2.linear.weight", "blocks.2.linear.bias", "head.weight", "head.bias"}


@pytest.mark.parametrize("strategy", ["head", "adapter", "lora"])
def test_frozen_parameters_do_not_move_during_fine_tuning(strategy):
    x, y = _synthetic(400, seed=4, bias_k=2.0)
    m = _model("trf")
    strat = make_strategy(strategy)
    strat.apply(m)
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    fit_torch(m, x, y, strategy=strat, epochs=2, batch_size=128, lr=1e-3, weight_decay=0.1, seed=0)
    after = dict(m.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_strategy_reduces_error_on_shifted_data(strategy):
    x, y = _synthetic(1500, seed=5)
    x_ft, y_ft = _synthetic(300, seed=6, bias_k=3.0)
    m = _model("dnn")
    fit_torch(m, x, y, epochs=8, batch_size=128, lr=3e-3, seed=0)
    before = float(np.sqrt(np.mean((predict_torch(m, x_ft) - y_ft) ** 2)))
    strat = make_strategy(strategy, **({"epochs_per_group": 3} if strategy == "gradual" else {}))
    tuned = strat.apply(copy.deepcopy(m))
    fit_torch(tuned, x_ft, y_ft, strategy=strat, epochs=15, batch_size=64, lr=3e-3, seed=0)
    after = float(np.sqrt(np.mean((predict_torch(tuned, x_ft) - y_ft) ** 2)))
    assert after < 0.6 * before


@pytest.mark.parametrize("name", TORCH)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_model_scripts_after_every_strategy(name, strategy):
    strat = make_strategy(strategy)
    m = strat.apply(_model(name)).eval()
    _perturb([p for p in m.parameters() if p.requires_grad])
    exported = strat.export_model(m)
    scripted = _script(exported)
    x, _ = _synthetic(64)
    assert np.abs(predict_torch(scripted, x) - predict_torch(m, x)).max() <= 1e-4


def test_trainable_parameter_counts_order():
    for name in TORCH:
        full = trainable_parameters(Full().apply(_model(name)))
        for strategy in ("head", "adapter", "lora"):
            assert 0 < trainable_parameters(make_strategy(strategy).apply(_model(name))) < full


def test_make_strategy_names_and_errors():
    assert isinstance(make_strategy("LoRA", rank=2), LoRA)
    assert isinstance(make_strategy("head"), Head)
    with pytest.raises(ValueError, match="full, head, gradual, adapter, lora"):
        make_strategy("prompt")
    with pytest.raises(TypeError):
        make_strategy("lora", depth=3)
    with pytest.raises(ValueError, match="rank"):
        LoRA(rank=0)
    assert make_strategy("gradual", epochs_per_group=3).describe() == {"name": "gradual", "epochs_per_group": 3,
                                                                        "lr_decay": 2.6}
