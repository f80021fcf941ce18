"""The field's standard pieces (LeNet of ADDA/TLlib, bottleneck variants, inverse-decay lr, GRL warm start) and the
rule that benchmark recipes, not method configs, own the optimisation."""

import math
from pathlib import Path

import pytest
import torch
import yaml

from da.losses import DomainAdversarialLoss
from da.losses.schedules import WarmStart, make_schedule
from da.models.backbones import Bottleneck, LeNet, LeNetBN, build_backbone
from da.module import TransferModule, inverse_decay

ROOT = Path(__file__).resolve().parents[1]


def test_lenet_is_the_adda_tllib_net():
    net = build_backbone("lenet", (1, 28, 28))
    assert isinstance(net, LeNet) and net.out_features == 500
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == \
        [(1, 20, (5, 5), (0, 0)), (20, 50, (5, 5), (0, 0))]
    fc = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in fc] == [(800, 500)]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert [m.p for m in net.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d))] == [0.5, 0.5]
    # conv 1*20*25 + 20, 20*50*25 + 50; fc 800*500 + 500
    assert sum(p.numel() for p in net.parameters()) == 520 + 25_050 + 400_500 == 426_070
    net.eval()
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 500)


def test_lenet_other_sizes_and_the_old_net():
    assert build_backbone("lenet", (1, 16, 16)).fc[1].in_features == 50  # 16 -> 12 -> 6 -> 2 -> 1
    assert build_backbone("lenet", (3, 32, 32)).fc[1].in_features == 50 * 5 * 5
    with pytest.raises(ValueError, match="at least 16x16.*image_size: 28"):
        build_backbone("lenet", (1, 12, 12))
    old = build_backbone("lenet_bn", (1, 16, 16))
    assert isinstance(old, LeNetBN) and old.out_features == 256
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in old.modules())


def test_bottleneck_with_and_without_bn_and_dropout():
    kinds = lambda b: [type(m).__name__ for m in b]  # noqa: E731
    assert kinds(Bottleneck(500, 256, dropout=0.0)) == ["Linear", "BatchNorm1d", "ReLU"]  # TLlib
    assert kinds(Bottleneck(500, 256, dropout=0.5, batch_norm=False)) == ["Linear", "ReLU", "Dropout"]  # DAN
    assert kinds(Bottleneck(500, 256)) == ["Linear", "BatchNorm1d", "ReLU", "Dropout"]
    m = TransferModule(num_classes=10, input_shape=(1, 28, 28), backbone="lenet", bottleneck_dim=256,
                       bottleneck_bn=False, bottleneck_dropout=0.0)
    assert kinds(m.bottleneck) == ["Linear", "ReLU"] and m.classifier.in_features == 256
    with pytest.raises(ValueError, match="dropout must be in"):
        Bottleneck(4, 4, dropout=1.0)


def test_inverse_decay_lr_values_at_three_steps():
    m = TransferModule(num_classes=3, input_shape=(8,), backbone="mlp", optimizer="sgd", lr=0.01, scheduler="inv",
                       inv_gamma=0.001, inv_power=0.75)
    cfg = m.configure_optimizers()  # no trainer needed: the schedule does not depend on max_steps
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(2501):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[1000] == pytest.approx(0.01 * 2 ** -0.75) == pytest.approx(0.0059460, abs=1e-7)
    assert lrs[2500] == pytest.approx(0.01 * 3.5 ** -0.75) == pytest.approx(0.0039079, abs=1e-7)
    assert inverse_decay(0.01, 1.0)(100) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="inv_gamma >= 0"):
        TransferModule(num_classes=3, input_shape=(8,), backbone="mlp", scheduler="inv", inv_gamma=-1.0)


def test_warm_start_grl_has_its_own_horizon():
    tllib = make_schedule("tllib")
    assert isinstance(tllib, WarmStart) and tllib.max_iters == 1000
    # lo + (hi - lo) (2 / (1 + exp(-alpha i / N)) - 1): independent of the run's length
    assert tllib(0.0, 0) == 0.0
    assert tllib(0.5, 1000) == pytest.approx(2 / (1 + math.exp(-1)) - 1) == pytest.approx(0.46212, abs=1e-5)
    assert tllib(0.1, 1000) == tllib(0.9, 1000)
    assert tllib(1.0, 2500) == pytest.approx(0.84828, abs=1e-5)
    own = make_schedule({"name": "warm_start", "max_iters": 2500, "alpha": 10.0, "lo": 0.1, "hi": 0.5})
    assert own(0, 1250) == pytest.approx(0.1 + 0.4 * (2 / (1 + math.exp(-5)) - 1))
    with pytest.raises(ValueError, match="function of the step"):
        tllib(0.5)
    with pytest.raises(ValueError, match="needs a 'name'"):
        make_schedule({"max_iters": 10})
    with pytest.raises(ValueError, match="positive number of steps"):
        WarmStart(max_iters=0)


def test_module_passes_the_global_step_to_schedules(monkeypatch):
    torch.manual_seed(0)
    m = TransferModule(num_classes=3, input_shape=(8,), backbone="mlp",
                       losses=[DomainAdversarialLoss(weight=1.0, schedule="tllib", hidden=8)])
    monkeypatch.setattr(TransferModule, "progress", property(lambda self: 0.1))
    monkeypatch.setattr(TransferModule, "global_step", property(lambda self: 1000))
    x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    m.training_step({"source": (x, y, torch.zeros(6, dtype=torch.long)), "target": (torch.randn(6, 8), y, y)}, 0)
    terms = m._step_logs[1]  # (name, value, coefficient, the term's own logs): logged at the logger's cadence
    last_logs = dict((name, logs) for name, _, _, logs in terms)["dann"]
    assert float(last_logs["grl_coeff"]) == pytest.approx(0.46212, abs=1e-5)


OPTIMISATION_KEYS = {"optimizer", "lr", "momentum", "weight_decay", "scheduler", "step_size", "gamma", "inv_gamma",
                     "inv_power", "backbone_lr_mult", "no_decay_norm_bias"}


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "method").glob("*.yaml")), ids=lambda p: p.name)
def test_method_configs_set_no_optimisation(path):
    cfg = yaml.safe_load(path.read_text()) or {}
    keys = set((cfg.get("model") or {})) & OPTIMISATION_KEYS
    assert not keys, (f"{path.name} sets {sorted(keys)}: the optimiser and lr schedule belong to the benchmark recipe "
                      f"(configs/benchmark/); a paper's own optimiser is a named recipe variant")
    assert not set(cfg.get("trainer") or {}) & {"max_steps", "max_epochs"}, f"{path.name} sets the budget"


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "benchmark").glob("*.yaml")), ids=lambda p: p.name)
def test_benchmark_recipes_name_themselves_and_set_the_optimisation(path):
    cfg = yaml.safe_load(path.read_text())
    assert cfg["recipe"] == path.stem
    model = cfg["model"]
    assert {"backbone", "optimizer", "lr", "scheduler"} <= set(model), path.name
    assert "losses" not in model, f"{path.name} sets loss terms: those belong to configs/method/"
    assert "max_steps" in cfg["trainer"] and "batch_size" in cfg["data"]


def test_digits_tllib_recipe_values():
    cfg = yaml.safe_load((ROOT / "configs" / "benchmark" / "digits_tllib.yaml").read_text())
    assert cfg["model"].items() >= {"backbone": "lenet", "optimizer": "sgd", "lr": 0.01, "momentum": 0.9,
                                 "weight_decay": 0.001, "scheduler": "inv", "inv_gamma": 0.001, "inv_power": 0.75,
                                 "bottleneck_dim": 256, "bottleneck_dropout": 0.0, "no_decay_norm_bias": False}.items()
    assert cfg["trainer"]["max_steps"] == 2500
    assert cfg["data"] == {"batch_size": 128, "val_fraction": 0.0, "options": {"image_size": 28}}


def test_quickstart_is_the_builtin_data_and_recipe():
    from da.runs.config import deep_merge

    load = lambda p: yaml.safe_load((ROOT / p).read_text())  # noqa: E731
    merged = deep_merge(load("configs/data/builtin.yaml"), load("configs/benchmark/builtin.yaml"))
    assert load("configs/quickstart.yaml") == merged


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_benchmark_data_configs_hold_only_data(path):
    cfg = yaml.safe_load(path.read_text())
    if path.stem in ("cifar10", "cifar100_finetune", "amazon_minilm_features", "amazon_reviews"):
        pytest.skip("a complete fine-tuning / text config, not one of the benchmark protocols' data files")
    assert set(cfg) == {"data"}, f"{path.name} sets {sorted(set(cfg) - {'data'})}: those belong to a recipe"
    assert "batch_size" not in cfg["data"] and "val_fraction" not in cfg["data"]


def test_amazon_logreg_row_uses_every_pair(monkeypatch):
    import importlib.util

    from da.data import domain as domain_mod
    from da.data.domain import Domain

    spec = importlib.util.spec_from_file_location("logreg", ROOT / "papers" / "dann_amazon" / "logreg.py")
    logreg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(logreg)
    g = torch.Generator().manual_seed(0)

    def fake(name, root=None, standardize="none"):  # separable on feature 0, the sign flipped in "kitchen"
        def part(n):
            y = torch.arange(n) % 2
            x = torch.randn(n, 3, generator=g) * 0.1
            x[:, 0] += (2 * y - 1).float() * (-1.0 if name.endswith("kitchen") else 1.0)
            return Domain(name, ["negative", "positive"], y, x=x, modality="features")
        return {"train": part(40), "test": part(20)}

    monkeypatch.setattr(domain_mod, "load_domain", fake)
    acc = logreg.pair_accuracies("unused")
    assert len(acc) == 12
    assert all(a == (0.0 if "kitchen" in (s, t) else 1.0) for (s, t), a in acc.items())


def test_channels_last_is_the_same_network_in_another_layout():
    torch.manual_seed(0)
    plain = TransferModule(input_shape=(1, 28, 28), backbone="lenet", bottleneck_dim=256).eval()
    fast = TransferModule(input_shape=(1, 28, 28), backbone="lenet", bottleneck_dim=256, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())  # copies into the channels_last weights, keeping their layout
    conv = fast.backbone.conv2[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    seen = []
    fast.backbone.conv1.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(
        memory_format=torch.channels_last)))
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)
    assert seen == [True]
    # the layout survives a copy (ADDA's target encoder is a deepcopy of the backbone)
    import copy
    twin = copy.deepcopy(fast.backbone)
    seen.clear()
    twin(x)
    assert seen == [True]  # (deepcopy copies both hooks: the probe on conv1 and the converting one)
    assert twin.conv2[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert len(twin._forward_pre_hooks) == 1
