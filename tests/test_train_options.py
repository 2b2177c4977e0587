"""Every TrainConfig field reaches the computation: the optimiser's update rule, the schedules in the records, what
the trainer hands to the views, the model, the monitor and the kNN evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import erlib.config as config_module
import erlib.train as T
from erlib.config import TrainConfig
from erlib.runs import load_checkpoint, load_run
from erlib.train import LARS, build_optimizer, train, train_step
from tests.helpers import MICRO_RUN

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {**MICRO_RUN, "epochs": 3}


def cfg(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{**BASE, "out_dir": str(tmp_path), "name": "run", **overrides})


# ------------------------------------------------------------------------------------------------- the optimiser
def test_lars_step_matches_its_formula_for_weights_and_is_plain_sgd_for_biases():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    gw, gb = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    pw, pb = nn.Parameter(w.clone()), nn.Parameter(b.clone())
    lr, wd, eta, m = 0.3, 0.01, 0.02, 0.9
    opt = LARS(
        [{"params": [pw], "weight_decay": wd, "lars": True}, {"params": [pb], "weight_decay": 0.0, "lars": False}],
        lr=lr,
        momentum=m,
        eta=eta,
    )
    buf_w, buf_b = torch.zeros_like(w), torch.zeros_like(b)  # the momentum buffers start at zero
    for _ in range(2):  # the second step exercises the momentum buffer
        pw.grad, pb.grad = gw.clone(), gb.clone()
        opt.step()
        u = gw + wd * w
        update = eta * w.norm() / u.norm() * u
        buf_w = m * buf_w + update
        buf_b = m * buf_b + gb
        w, b = w - lr * buf_w, b - lr * buf_b
        torch.testing.assert_close(pw.detach(), w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pb.detach(), b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_lars_on_a_plain_parameter_list_uses_its_documented_defaults(wd):
    """Without parameter groups every parameter is adapted (lars=True) with momentum 0.9, η = 0.02 and the given
    weight decay (default 0): two steps follow w ← w − lr·buf, buf ← 0.9·buf + η‖w‖/‖g+λw‖·(g+λw)."""
    g = torch.Generator().manual_seed(1)
    w, grad = torch.randn(5, 2, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    p = nn.Parameter(w.clone())
    opt = LARS([p], lr=0.5, **({"weight_decay": wd} if wd else {}))
    assert opt.defaults == dict(lr=0.5, momentum=0.9, weight_decay=wd, eta=0.02, lars=True)
    buf = torch.zeros_like(w)
    for _ in range(2):
        p.grad = grad.clone()
        opt.step()
        u = grad + wd * w
        buf = 0.9 * buf + 0.02 * w.norm() / u.norm() * u
        w = w - 0.5 * buf
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,kind", [("sgd", torch.optim.SGD), ("lars", LARS), ("adamw", torch.optim.AdamW)])
def test_optimizer_choice_weight_decay_and_momentum_reach_the_parameter_groups(tmp_path, name, kind):
    c = cfg(tmp_path, optimizer=name, weight_decay=0.123, momentum=0.7, lr=0.4)
    method = c.build_method(64)
    opt = build_optimizer(method, c)
    assert type(opt) is kind
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.123 and plain["weight_decay"] == 0.0 and decayed["lr"] == 0.4
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len([p for p in method.parameters() if p.requires_grad])
    if name != "adamw":
        assert decayed["momentum"] == plain["momentum"] == 0.7
    if name == "lars":  # the trust ratio scales the weights' updates only; biases and norm scales take plain SGD
        assert decayed["lars"] is True and plain["lars"] is False


def test_grad_clip_bounds_the_norm_of_the_applied_gradient(tmp_path):
    c = cfg(tmp_path, lr=1.0, momentum=0.0, weight_decay=0.0)
    torch.manual_seed(0)
    method = c.build_method(64)
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)]

    def update_norm(clip: float) -> float:
        net = c.build_method(64)
        net.load_state_dict(method.state_dict())
        before = [p.detach().clone() for p in net.parameters()]
        train_step(net, net, build_optimizer(net, c), views, None, None, clip, 0.0)
        return math.sqrt(sum(((p.detach() - q) ** 2).sum().item() for p, q in zip(net.parameters(), before)))

    raw = update_norm(0.0)
    assert raw > 0.05
    assert update_norm(0.05) == pytest.approx(0.05, rel=1e-4)  # lr 1, no momentum: the update is the clipped gradient
    assert update_norm(10 * raw) == pytest.approx(raw, rel=1e-5)  # a bound above the norm changes nothing


# ----------------------------------------------------------------------------------------- schedules in the records
def test_lr_warmup_min_lr_and_weight_decay_schedule_follow_their_formulas(tmp_path):
    run = load_run(
        train(
            cfg(tmp_path, lr=0.2, min_lr=0.02, warmup_epochs=1.0, weight_decay=1e-3, final_weight_decay=1e-1, epochs=4)
        )
    )
    records = run.train_records()
    total, warm = 8, 2  # 64 images / batch 32 = 2 steps per epoch; 1 warm-up epoch
    assert [r["step"] for r in records] == list(range(1, total + 1))  # log_every = 1
    for r in records:
        i = r["step"] - 1  # the record of step s carries the values used by optimiser step s (index s - 1)
        lr = (
            0.2 * i / warm
            if i < warm
            else 0.02 + (0.2 - 0.02) * 0.5 * (1 + math.cos(math.pi * (i - warm) / (total - warm)))
        )
        wd = 1e-1 - (1e-1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * i / total))
        assert r["lr"] == pytest.approx(lr, rel=1e-12) and r["weight_decay"] == pytest.approx(wd, rel=1e-12)


def test_log_every_epochs_batch_size_and_train_subset_set_the_records(tmp_path):
    run = load_run(train(cfg(tmp_path, log_every=4, epochs=3, train_subset=96, batch_size=32)))
    assert [r["step"] for r in run.train_records()] == [4, 8, 9]  # every 4 steps, and the last step
    assert [(r["epoch"], r["step"]) for r in run.epoch_records()] == [(0, 0), (1, 3), (2, 6), (3, 9)]


# ------------------------------------------------------------------------------------------------- what is handed on
@pytest.fixture
def spy(monkeypatch):
    calls: dict[str, list] = {"views": [], "step": [], "knn": [], "recipes": [], "compile": []}
    make_views, recipe_views, knn = T.make_views, config_module.recipe_views, T.knn_accuracy
    real_step = T.train_step

    def views(images, recipes, g=None):
        calls["views"].append((images.shape[0], len(recipes)))
        return make_views(images, recipes, g)

    for module in (T, config_module):  # training views (the trainer), monitor views (TrainConfig.monitor_views)
        monkeypatch.setattr(module, "make_views", views)
    monkeypatch.setattr(
        config_module,
        "recipe_views",
        lambda name, **kw: calls["recipes"].append((name, kw)) or recipe_views(name, **kw),
    )
    monkeypatch.setattr(
        T,
        "knn_accuracy",
        lambda ftr, ytr, fte, yte, n, k, t: (
            calls["knn"].append((ftr.shape[0], fte.shape[0], k, t)) or knn(ftr, ytr, fte, yte, n, k, t)
        ),
    )

    def step(model, method, optimizer, views, index, amp, clip, progress, channels_last=False):
        calls["step"].append({"amp": amp, "clip": clip, "channels_last": channels_last, "views": len(views)})
        return real_step(model, method, optimizer, views, index, amp, clip, progress, channels_last)

    monkeypatch.setattr(T, "train_step", step)
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls["compile"].append(model) or model)
    return calls


def test_monitor_size_is_the_monitor_batch_and_batch_size_the_training_batch(tmp_path, spy):
    train(cfg(tmp_path, monitor_size=48, epochs=1, train_subset=64, batch_size=16))
    sizes = [n for n, _ in spy["views"]]
    assert sizes.count(48) == 1 and sizes.count(16) == 4  # the monitor views, made once for every epoch; 4 steps


def test_knn_settings_reach_the_evaluation(tmp_path, spy):
    run = load_run(
        train(cfg(tmp_path, knn_every=2, knn_k=10, knn_temperature=0.07, knn_train_size=48, knn_test_size=40, epochs=3))
    )
    assert [("knn10" in r, "knn20" in r) for r in run.epoch_records()] == [
        (True, True),  # epoch 0, the untrained network
        (False, False),
        (True, True),
        (True, True),  # epoch 3 is not a multiple of 2, but the last epoch is always evaluated
    ]
    assert set(spy["knn"]) == {(48, 40, 10, 0.07), (48, 40, 20, 0.07)}


def test_augmentation_local_crops_precision_and_clip_reach_the_step(tmp_path, spy):
    train(
        cfg(
            tmp_path,
            method="swav",
            augmentation="byol",
            local_crops=2,
            precision="bf16",
            grad_clip=2.5,
            epochs=1,
            method_options={"proj_hidden_dim": 32, "proj_dim": 16, "num_prototypes": 8},
        )
    )
    assert spy["recipes"][0] == ("byol", {"size": 32, "local_crops": 2})
    assert {s["views"] for s in spy["step"]} == {4} and {s["amp"] for s in spy["step"]} == {torch.bfloat16}
    assert {s["clip"] for s in spy["step"]} == {2.5}
    spy["step"].clear()
    train(cfg(tmp_path, name="fp32", precision="fp32", epochs=1))
    assert {s["amp"] for s in spy["step"]} == {None}
    assert spy["recipes"][-1][0] == "simclr"  # "" = the method's own recipe


def test_channels_last_false_keeps_nchw_and_true_follows_the_machine(tmp_path, spy, monkeypatch):
    def conv_weight_layout(run_dir):
        w = load_checkpoint(run_dir / "checkpoint.pt")["method"]["backbone.features.0.weight"]
        return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()

    assert not conv_weight_layout(train(cfg(tmp_path, channels_last=False, epochs=1)))
    assert {s["channels_last"] for s in spy["step"]} == {False}
    spy["step"].clear()
    monkeypatch.setattr(T.accel, "choose_channels_last", lambda device, requested="auto": True)
    assert conv_weight_layout(train(cfg(tmp_path, name="cl", channels_last=True, epochs=1)))
    assert {s["channels_last"] for s in spy["step"]} == {True}


def test_compile_wraps_the_step(tmp_path, spy):
    train(cfg(tmp_path, compile=True, epochs=1))
    assert len(spy["compile"]) == 1
    train(cfg(tmp_path, name="plain", epochs=1))
    assert len(spy["compile"]) == 1


def test_seed_fixes_weights_batches_and_views(tmp_path):
    def losses(name, seed):
        return [r["loss"] for r in load_run(train(cfg(tmp_path, name=name, seed=seed, epochs=1))).train_records()]

    assert losses("a", 3) == losses("b", 3) != losses("c", 4)


def test_checkpoint_every_sets_which_epochs_leave_a_checkpoint(tmp_path):
    def stop_in_epoch_3(record):
        if record["kind"] == "train" and record["step"] == 5:  # 2 steps per epoch
            raise KeyboardInterrupt

    for every, expected in ((1, 2), (2, 2), (0, None)):
        name = f"every{every}"
        with pytest.raises(KeyboardInterrupt):
            train(cfg(tmp_path, name=name, checkpoint_every=every, epochs=4), callback=stop_in_epoch_3)
        ckpt = tmp_path / name / "checkpoint.pt"
        assert (load_checkpoint(ckpt)["epoch"] if ckpt.exists() else None) == expected, every
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path, name="every3", checkpoint_every=3, epochs=4), callback=stop_in_epoch_3)
    assert not (tmp_path / "every3" / "checkpoint.pt").exists()


def test_progress_shows_a_bar_only_when_asked(tmp_path, capfd):
    train(cfg(tmp_path, name="quiet", epochs=1))
    assert "quiet" not in capfd.readouterr().err
    train(cfg(tmp_path, name="loud", progress=True, epochs=1))
    assert "loud" in capfd.readouterr().err


def test_device_out_dir_name_and_model_fields_reach_the_run(tmp_path):
    run = load_run(
        train(
            cfg(
                tmp_path / "elsewhere",
                name="mine",
                device="cpu",
                method="byol",
                er=True,
                epochs=1,
                method_options={"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 24, "tau_base": 0.5},
            )
        )
    )
    assert run.path == tmp_path / "elsewhere" / "mine" and run.meta["device"] == "cpu"
    method = run.build_method()
    assert type(method).__name__ == "BYOL" and method.cfg.er and method.cfg.tau_base == 0.5
    assert type(method.backbone).__name__ == "TinyConvNet" and method.predictor[0].out_features == 24


#: Each TrainConfig field and the test that shows its effect (data fields: tests/test_data.py and test_runs.py).
FIELD_TESTS = {
    "dataset": "test_data.py",
    "data_dir": "test_data.py::test_data_dir_is_honoured_even_when_a_decoded_cache_exists",
    "download": "test_presets.py::test_torchvision_cifar10_is_fetched_when_the_pack_is_missing",
    "train_subset": "test_log_every_epochs_batch_size_and_train_subset_set_the_records",
    "augmentation": "test_augmentation_local_crops_precision_and_clip_reach_the_step",
    "local_crops": "test_augmentation_local_crops_precision_and_clip_reach_the_step",
    "method": "test_device_out_dir_name_and_model_fields_reach_the_run",
    "er": "test_device_out_dir_name_and_model_fields_reach_the_run",
    "method_options": "test_device_out_dir_name_and_model_fields_reach_the_run",
    "backbone": "test_device_out_dir_name_and_model_fields_reach_the_run",
    "epochs": "test_log_every_epochs_batch_size_and_train_subset_set_the_records",
    "batch_size": "test_monitor_size_is_the_monitor_batch_and_batch_size_the_training_batch",
    "optimizer": "test_optimizer_choice_weight_decay_and_momentum_reach_the_parameter_groups",
    "lr": "test_lr_warmup_min_lr_and_weight_decay_schedule_follow_their_formulas",
    "min_lr": "test_lr_warmup_min_lr_and_weight_decay_schedule_follow_their_formulas",
    "weight_decay": "test_optimizer_choice_weight_decay_and_momentum_reach_the_parameter_groups",
    "final_weight_decay": "test_lr_warmup_min_lr_and_weight_decay_schedule_follow_their_formulas",
    "momentum": "test_lars_step_matches_its_formula_for_weights_and_is_plain_sgd_for_biases",
    "grad_clip": "test_grad_clip_bounds_the_norm_of_the_applied_gradient",
    "warmup_epochs": "test_lr_warmup_min_lr_and_weight_decay_schedule_follow_their_formulas",
    "log_every": "test_log_every_epochs_batch_size_and_train_subset_set_the_records",
    "monitor_size": "test_monitor_size_is_the_monitor_batch_and_batch_size_the_training_batch",
    "knn_k": "test_knn_settings_reach_the_evaluation",
    "knn_temperature": "test_knn_settings_reach_the_evaluation",
    "knn_every": "test_knn_settings_reach_the_evaluation",
    "knn_train_size": "test_knn_settings_reach_the_evaluation",
    "knn_test_size": "test_knn_settings_reach_the_evaluation",
    "seed": "test_seed_fixes_weights_batches_and_views",
    "precision": "test_augmentation_local_crops_precision_and_clip_reach_the_step",
    "channels_last": "test_channels_last_false_keeps_nchw_and_true_follows_the_machine",
    "compile": "test_compile_wraps_the_step",
    "device": "test_device_out_dir_name_and_model_fields_reach_the_run",
    "checkpoint_every": "test_checkpoint_every_sets_which_epochs_leave_a_checkpoint",
    "out_dir": "test_device_out_dir_name_and_model_fields_reach_the_run",
    "name": "test_device_out_dir_name_and_model_fields_reach_the_run",
    "progress": "test_progress_shows_a_bar_only_when_asked",
}


def test_every_train_config_field_has_an_effect_test():
    assert set(FIELD_TESTS) == {f.name for f in TrainConfig.field_info()}
    here = Path(__file__).read_text()
    for test in FIELD_TESTS.values():
        name = test.partition("::")[2] if "::" in test else test
        source = (
            (Path(__file__).parent / test.partition("::")[0]).read_text()
            if test.startswith("test_") and (".py" in test)
            else here
        )
        assert name.endswith(".py") or f"def {name}(" in source, test


def test_deepcluster_bank_is_filled_before_the_first_step_so_epoch_one_trains(tmp_path):
    """The trainer's pass before the first step (DeepCluster-v2's init_memory) fills the bank: the first clustering
    happens before epoch 1, so the first training step already has labels and a positive loss (without the pass the
    whole first epoch has a zero loss). The untrained network's epoch-0 record comes before the pass."""
    cfg = TrainConfig(
        dataset="synthetic",
        backbone="convnet_tiny",
        method="deepcluster",
        batch_size=64,
        epochs=1,
        optimizer="sgd",
        lr=0.05,
        warmup_epochs=0,
        log_every=1,
        monitor_size=64,
        knn_k=20,
        progress=False,
        out_dir=str(tmp_path),
        name="dc",
        method_options={"proj_hidden_dim": 32, "proj_dim": 16, "num_prototypes": [8, 6]},
    )
    run = load_run(train(cfg))
    first_train = run.train_records()[0]
    assert first_train["step"] == 1 and first_train["loss"] > 0.5  # CE over 8 and 6 clusters: about log K
    state = load_checkpoint(run.checkpoint)["method"]
    assert bool(state["seen"].all()) and bool((state["assignments"] >= 0).all())
