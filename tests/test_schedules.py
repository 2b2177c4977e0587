"""erlib.schedules: cosine and warm-up–cosine schedules, BYOL/DINO's EMA momentum and the in-place EMA update, each
against its closed form."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from erlib.schedules import cosine_schedule, ema_momentum, ema_update_, warmup_cosine


@pytest.mark.parametrize("start,end", [(1.0, 0.0), (0.3, 3e-4), (0.04, 0.07), (2.0, 2.0)])
def test_cosine_schedule_endpoints_midpoint_and_closed_form(start, end):
    assert cosine_schedule(start, end, 0.0) == pytest.approx(start, abs=1e-15)
    assert cosine_schedule(start, end, 1.0) == pytest.approx(end, abs=1e-15)
    assert cosine_schedule(start, end, 0.5) == pytest.approx((start + end) / 2, abs=1e-15)
    for p in (0.1, 0.25, 0.8):
        expected = end + (start - end) * (1 + math.cos(math.pi * p)) / 2
        assert cosine_schedule(start, end, p) == pytest.approx(expected, abs=1e-15)


def test_cosine_schedule_is_monotone_and_clipped_outside_0_1():
    values = [cosine_schedule(1.0, 0.1, i / 50) for i in range(51)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert cosine_schedule(1.0, 0.1, -0.5) == 1.0
    assert cosine_schedule(1.0, 0.1, 1.7) == pytest.approx(0.1, abs=1e-15)


@pytest.mark.parametrize("base,min_lr,total,warmup", [(0.6, 0.006, 110, 10), (2.0, 0.3, 50, 7), (0.05, 0.05, 20, 0)])
def test_warmup_cosine_peaks_at_the_end_of_warmup_and_ends_at_the_min_lr(base, min_lr, total, warmup):
    assert warmup_cosine(base, min_lr, warmup, total, warmup) == pytest.approx(base, abs=1e-15)
    assert warmup_cosine(base, min_lr, total, total, warmup) == pytest.approx(min_lr, abs=1e-15)
    values = [warmup_cosine(base, min_lr, s, total, warmup) for s in range(total + 1)]
    assert max(values) == pytest.approx(base, abs=1e-15) and min(values[warmup:]) == pytest.approx(min_lr, abs=1e-15)
    assert all(a >= b - 1e-15 for a, b in zip(values[warmup:], values[warmup + 1 :]))  # decays after the warm-up


def test_cosine_schedule_ramps_the_weight_decay_up_to_its_final_value():
    """DINO's weight decay 0.04 → 0.4 (cosine): the trainer's final_weight_decay is the value at progress 1."""
    start, final = 0.04, 0.4
    assert cosine_schedule(start, final, 0.0) == pytest.approx(start, abs=1e-15)
    assert cosine_schedule(start, final, 1.0) == pytest.approx(final, abs=1e-15)
    assert cosine_schedule(start, final, 0.25) == pytest.approx(final - (final - start) * (1 + math.sqrt(0.5)) / 2)
    values = [cosine_schedule(start, final, i / 20) for i in range(21)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_warmup_cosine_is_linear_warmup_then_cosine_decay():
    base, final, total, warmup, start = 0.6, 0.006, 110, 10, 0.3
    # linear warm-up from warmup_start to base
    for step in range(warmup):
        expected = start + (base - start) * step / warmup
        assert warmup_cosine(base, final, step, total, warmup, start) == pytest.approx(expected, abs=1e-15)
    assert warmup_cosine(base, final, 0, total, warmup, start) == pytest.approx(start)
    assert warmup_cosine(base, final, 5, total, warmup, start) == pytest.approx((start + base) / 2)
    # then a cosine from base (end of warm-up) to final (last step)
    assert warmup_cosine(base, final, warmup, total, warmup, start) == pytest.approx(base, abs=1e-15)
    assert warmup_cosine(base, final, 60, total, warmup, start) == pytest.approx((base + final) / 2, abs=1e-15)
    assert warmup_cosine(base, final, total, total, warmup, start) == pytest.approx(final, abs=1e-15)
    for step in (15, 42, 99):
        p = (step - warmup) / (total - warmup)
        expected = final + (base - final) * (1 + math.cos(math.pi * p)) / 2
        assert warmup_cosine(base, final, step, total, warmup, start) == pytest.approx(expected, abs=1e-15)
    # no warm-up: a plain cosine from step 0 (default warmup_start = 0 is then never used)
    assert warmup_cosine(base, final, 0, total) == pytest.approx(base)
    assert warmup_cosine(base, final, total // 2, total) == pytest.approx((base + final) / 2)
    assert warmup_cosine(base, 0.0, 0, total, warmup) == 0.0  # default warm-up starts at 0


def test_warmup_cosine_with_a_single_decay_step_or_none_reaches_its_endpoints():
    """Degenerate lengths (a run of one epoch of a few steps): one decay step goes from base straight to final; with
    the warm-up as long as the run (T = W) the last step is already at final, and a one-step warm-up starts at v_0."""
    base, final, start = 0.8, 0.1, 0.2
    assert warmup_cosine(base, final, 2, 3, 2, start) == pytest.approx(base, abs=1e-15)  # T - W = 1: step W is base
    assert warmup_cosine(base, final, 3, 3, 2, start) == pytest.approx(final, abs=1e-15)  # ... and step T is final
    assert warmup_cosine(base, final, 3, 2, 2, start) == pytest.approx(final, abs=1e-15)  # T = W: past the end
    assert warmup_cosine(base, final, 0, 5, 1, start) == pytest.approx(start, abs=1e-15)  # W = 1: step 0 is v_0
    assert warmup_cosine(base, final, 1, 5, 1, start) == pytest.approx(base, abs=1e-15)


@pytest.mark.parametrize("tau_base", [0.0, 0.9, 0.99, 0.996])
def test_ema_momentum_follows_byol_formula(tau_base):
    for p in (0.0, 0.5, 1.0, 0.3):
        expected = 1 - (1 - tau_base) * (math.cos(math.pi * p) + 1) / 2
        assert ema_momentum(tau_base, p) == pytest.approx(expected, abs=1e-15)
    assert ema_momentum(tau_base, 0.0) == pytest.approx(tau_base, abs=1e-15)
    assert ema_momentum(tau_base, 0.5) == pytest.approx(1 - (1 - tau_base) / 2, abs=1e-15)
    assert ema_momentum(tau_base, 1.0) == pytest.approx(1.0, abs=1e-15)


def small_net(seed: int, passes: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3, bias=False)).double()
    net.train()
    for _ in range(passes):  # move the BN running statistics (and the batch counter) away from their initial values
        net(torch.randn(16, 5, dtype=torch.float64))
    return net


@pytest.mark.parametrize("momentum", [0.0, 0.25, 0.9, 1.0])
def test_ema_update_matches_explicit_formula_and_copies_buffers(momentum):
    online, target = small_net(0, passes=3), small_net(1)
    old = copy.deepcopy(target)
    ema_update_(target, online, momentum)
    for t, o, s in zip(target.parameters(), old.parameters(), online.parameters()):
        torch.testing.assert_close(t, momentum * o + (1 - momentum) * s, rtol=1e-12, atol=1e-14)
    for name, buf in target.named_buffers():  # running_mean, running_var, num_batches_tracked
        assert torch.equal(buf, dict(online.named_buffers())[name]), name
    assert all(not torch.equal(a, b) for a, b in zip(old.buffers(), online.buffers()))  # the copy was visible
    if momentum == 0.0:  # the target becomes the online network
        for t, s in zip(target.parameters(), online.parameters()):
            assert torch.equal(t, s)


def test_ema_update_leaves_online_network_and_autograd_alone():
    online, target = small_net(0), small_net(1)
    before = copy.deepcopy(online.state_dict())
    ema_update_(target, online, 0.5)
    for name, value in online.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in target.parameters())


def test_ema_update_pairs_sequences_of_modules_in_order():
    """``ema_update_(target, (backbone, head), m)``: the online side as the modules themselves, no wrapper module."""
    online, target = small_net(0, passes=2), small_net(1)
    old = copy.deepcopy(target)
    ema_update_(target, (online[:2], online[2:]), 0.75)  # the same network, split in two
    for t, o, s in zip(target.parameters(), old.parameters(), online.parameters()):
        torch.testing.assert_close(t, 0.75 * o + 0.25 * s, rtol=1e-12, atol=1e-14)
    for name, buf in target.named_buffers():
        assert torch.equal(buf, dict(online.named_buffers())[name]), name
    twin = small_net(2)
    ema_update_([twin[:2], twin[2:]], [online[:2], online[2:]], 0.0)  # both sides as sequences
    for t, s in zip(twin.parameters(), online.parameters()):
        assert torch.equal(t, s)


def test_ema_update_rejects_different_architectures():
    with pytest.raises(ValueError, match="same architecture"):
        ema_update_(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), 0.9)
    with pytest.raises(ValueError, match="same architecture"):  # same parameter count, different shapes
        ema_update_(nn.Linear(3, 4), nn.Linear(4, 3), 0.9)
    net = small_net(0)
    with pytest.raises(ValueError, match="same architecture"):  # the online parts in the wrong order
        ema_update_(small_net(1), (net[2:], net[:2]), 0.9)
