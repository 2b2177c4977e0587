"""erlib.accel: explicit settings win, "auto" follows the CPU flags (the probe's measured rule only where they are
unreadable), the probe leaves the RNG alone, the allocator tuning removes page faults, and a bf16 step on the CPU trains
like fp32 with float32 metrics."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from erlib import accel
from erlib.methods import build
from erlib.presets import TINY_HEADS
from erlib.train import TrainConfig, build_optimizer, train_step

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------------------------
# CPU flags
# ------------------------------------------------------------------------------------------------------------------

X86_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
X86_AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
X86_AMX = "processor\t: 0\nflags\t\t: avx2 avx512f amx_tile amx_bf16 amx_int8\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    "text, native", [(X86_AVX2, False), (X86_AVX512_BF16, True), (X86_AMX, True), (ARM_BF16, True)]
)
def test_native_bf16_from_the_cpu_flags(tmp_path, text, native):
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    flags = accel.cpu_flags(info)
    assert "avx2" in flags or "asimd" in flags
    assert accel.cpu_native_bf16(flags) is native


def test_cpu_flags_of_a_missing_file_or_line_are_unknown(tmp_path):
    assert accel.cpu_flags(tmp_path / "nope") is None
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: something\n")
    assert accel.cpu_flags(tmp_path / "cpuinfo") is None


# ------------------------------------------------------------------------------------------------------------------
# explicit settings always win; bad ones are refused
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", torch.device("cpu")])
def test_explicit_precision_is_honoured_on_every_device(device):
    assert accel.choose_precision(device, "bf16") is torch.bfloat16
    assert accel.choose_precision(device, "fp32") is None


@pytest.mark.parametrize("device", ["cpu", "cuda", "meta"])
@pytest.mark.parametrize("requested, expected", [(True, True), (False, False), ("on", True), ("off", False)])
def test_explicit_channels_last_is_honoured(device, requested, expected):
    assert accel.choose_channels_last(device, requested) is expected


def test_auto_on_other_devices_is_fp32_nchw():
    assert accel.choose_precision("meta", "auto") is None and accel.choose_channels_last("meta", "auto") is False


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: accel.choose_precision("cpu", "fp16"), "precision = 'fp16' is invalid"),
        (lambda: accel.choose_precision("gpu0", "auto"), "device = 'gpu0' is not a torch device"),
        (lambda: accel.choose_channels_last("cpu", "yes"), "channels_last = 'yes' is invalid"),
        (lambda: accel.choose_channels_last("cpu", 1.0), "channels_last = 1.0 is invalid"),
        (lambda: accel.probe_cpu(batch=1), "batch = 1 is invalid"),
        (lambda: accel.tune_cpu_allocator(100), "keep_bytes = 100 is invalid"),
    ],
)
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------------------------------
# "auto" on the CPU: the rule applied to given timings, and the real probe
# ------------------------------------------------------------------------------------------------------------------


def fake_timings(monkeypatch, seconds: dict[str, float]) -> list:
    """Make the probe 'measure' ``seconds``; returns the list of candidate sets it asked for."""
    asked = []

    def fake(candidates, batch, size, rounds, slow_factor):
        asked.append(list(candidates))
        return {
            f"{p}/{'channels_last' if cl else 'nchw'}": seconds[f"{p}/{'channels_last' if cl else 'nchw'}"]
            for p, cl in candidates
        }

    monkeypatch.setattr(accel, "_time_candidates", fake)
    return asked


TIMES = {"fp32/nchw": 1.0, "fp32/channels_last": 0.8, "bf16/nchw": 0.5, "bf16/channels_last": 0.45}


@pytest.mark.parametrize(
    "native, times, precision, channels_last",
    [
        (True, TIMES, "bf16", True),  # bf16 2x faster: chosen, with its faster layout
        (True, {**TIMES, "bf16/nchw": 0.75, "bf16/channels_last": 0.74}, "fp32", True),  # 1.08x < margin: fp32
        (None, TIMES, "bf16", True),  # flags unknown: the measurement decides
        (True, {**TIMES, "bf16/channels_last": 0.49}, "bf16", False),  # 0.5 / 0.49 < 1.05: NCHW kept
        (True, {**TIMES, "fp32/channels_last": 0.97, "bf16/nchw": 2.0, "bf16/channels_last": 2.0}, "fp32", False),
    ],
)
def test_auto_rule_on_given_timings(monkeypatch, native, times, precision, channels_last):
    asked = fake_timings(monkeypatch, times)
    probe = accel.probe_cpu(refresh=True, native_bf16=native)
    assert (probe.precision, probe.channels_last) == (precision, channels_last), probe.reason
    assert {p for p, _ in asked[0]} == {"fp32", "bf16"}
    accel._PROBE.clear()


def test_emulated_bf16_is_not_even_timed(monkeypatch):
    asked = fake_timings(monkeypatch, TIMES)  # even though bf16 would time faster here
    probe = accel.probe_cpu(refresh=True, native_bf16=False)
    assert asked == [[("fp32", False), ("fp32", True)]]
    assert probe.precision == "fp32" and probe.dtype is None and probe.channels_last is True
    assert "no native bf16" in probe.reason
    accel._PROBE.clear()


@pytest.mark.parametrize("native, precision", [(True, torch.bfloat16), (False, None)])
def test_auto_follows_the_cpu_flags_without_timing_anything(monkeypatch, native, precision):
    """Where the flags are known, "auto" is fixed by them (the same command always takes the same path), and nothing
    is timed: a probe here would fail the test."""
    monkeypatch.setattr(accel, "cpu_native_bf16", lambda flags=None: native)
    monkeypatch.setattr(accel, "probe_cpu", lambda *a, **k: pytest.fail("auto must not time anything here"))
    assert accel.choose_precision("cpu", "auto") is precision
    assert accel.choose_channels_last("cpu", "auto") is True
    record = accel.describe("cpu")
    assert record["precision"] == ("bf16" if native else "fp32") and record["channels_last"] is True
    assert ("no native bf16" in record["auto_reason"]) is (not native) and "probe_seconds" not in record


def test_auto_with_unreadable_flags_takes_the_probes_choice_and_leaves_the_rng_alone(monkeypatch):
    monkeypatch.setattr(accel, "cpu_native_bf16", lambda flags=None: None)
    accel._PROBE.clear()
    before = torch.get_rng_state()
    first = (accel.choose_precision("cpu"), accel.choose_channels_last("cpu"))
    assert torch.equal(torch.get_rng_state(), before)  # the probe does not consume the training RNG
    for _ in range(3):  # cached: stable within the process
        assert (accel.choose_precision("cpu", "auto"), accel.choose_channels_last("cpu", "auto")) == first
    probe = accel.probe_cpu()
    assert probe.dtype == first[0] and probe.channels_last == first[1]
    assert all(s > 0 for s in probe.seconds.values()) and "fp32/nchw" in probe.seconds
    record = accel.describe("cpu")
    assert record["probe_seconds"] == probe.seconds and record["auto_reason"].startswith("CPU flags unreadable")
    accel._PROBE.clear()


def test_real_probe_with_bf16_as_a_candidate_times_all_four_paths():
    probe = accel.probe_cpu(refresh=True, batch=4, size=16, rounds=1, native_bf16=None)
    assert set(probe.seconds) == {"fp32/nchw", "fp32/channels_last", "bf16/nchw", "bf16/channels_last"}
    fastest_fp32 = min(probe.seconds["fp32/nchw"], probe.seconds["fp32/channels_last"])
    fastest_bf16 = min(probe.seconds["bf16/nchw"], probe.seconds["bf16/channels_last"])
    assert (probe.precision == "bf16") == (fastest_bf16 * accel.BF16_MARGIN < fastest_fp32)
    accel._PROBE.clear()


# ------------------------------------------------------------------------------------------------------------------
# allocator
# ------------------------------------------------------------------------------------------------------------------


def _has_mallinfo2() -> bool:
    import ctypes

    return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2) on Linux")
def test_allocator_tuning_serves_large_tensors_from_the_heap_and_keeps_them():
    """glibc's own accounting (``mallinfo2``), not the kernel's page-fault counter (which some sandboxes leave at 0):
    by default a process's first 16 MB blocks are mmaps of their own, unmapped when freed (so their pages fault in
    anew next time; glibc raises its threshold only after such frees); tuned, they come from the heap and, freed, stay
    there for the next allocation."""
    script = textwrap.dedent("""
        import ctypes, sys, torch
        from erlib import accel

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                "keepcost")]

        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = MallInfo2
        torch.set_num_threads(1)
        if sys.argv[1] == "tuned":
            assert accel.tune_cpu_allocator() and accel.tune_cpu_allocator()  # idempotent
        x = torch.rand(4, 1 << 20)  # 16 MB
        live = [x * 2 for _ in range(4)]  # four live 16 MB temporaries
        held = libc.mallinfo2()
        del live
        freed = libc.mallinfo2()
        print(held.hblks, held.hblkhd, freed.hblkhd, freed.arena, freed.fordblks)
    """)
    procs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", script, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for mode in ("default", "tuned")
    }
    info = {}
    for mode, proc in procs.items():  # both at once: most of their time is importing torch
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        info[mode] = dict(
            zip(("held_blocks", "held_mmap", "freed_mmap", "arena", "free_in_heap"), map(int, out.split()[-5:]))
        )
    mb16 = 16 << 20
    default, tuned = info["default"], info["tuned"]
    # default: x and the four temporaries are each an mmap of their own; freeing the four unmaps them
    assert default["held_blocks"] >= 5 and default["held_mmap"] >= 5 * mb16, info
    assert default["freed_mmap"] <= default["held_mmap"] - 4 * mb16, info
    # tuned: all five come from the heap, and the four freed ones stay in it, ready for reuse
    assert tuned["held_mmap"] < mb16 and tuned["freed_mmap"] < mb16, info
    assert tuned["arena"] >= 5 * mb16 and tuned["free_in_heap"] >= 4 * mb16, info


# ------------------------------------------------------------------------------------------------------------------
# a bf16 training step on the CPU
# ------------------------------------------------------------------------------------------------------------------


def losses(amp: torch.dtype | None, steps: int = 4) -> tuple[list[float], dict[str, torch.dtype]]:
    torch.manual_seed(0)
    method = build("simclr", backbone="convnet_tiny", **TINY_HEADS["simclr"])
    optimizer = build_optimizer(method, TrainConfig(optimizer="sgd", lr=0.05, weight_decay=0.0))
    g = torch.Generator().manual_seed(1)
    base = torch.randn(16, 3, 16, 16, generator=g)
    views = [base + 0.1 * torch.randn(base.shape, generator=g) for _ in range(2)]
    out, seen = None, []
    for _ in range(steps):
        out = train_step(method, method, optimizer, views, torch.arange(16), amp, 0.0, 0.5)
        seen.append(out.loss.item())
    return seen, {k: v.dtype for k, v in {"loss": out.loss, **out.metrics}.items()}


def test_bf16_step_on_the_cpu_trains_like_fp32_and_keeps_the_metrics_float32():
    fp32, fp32_types = losses(None)
    bf16, bf16_types = losses(torch.bfloat16)
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16[-1] < bf16[0] - 0.05 and fp32[-1] < fp32[0] - 0.05  # both learn the fixed batch
    drop32, drop16 = fp32[0] - fp32[-1], bf16[0] - bf16[-1]
    assert abs(drop16 - drop32) < 0.25 * drop32, (fp32, bf16)
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.05, (fp32, bf16)
    assert set(bf16_types.values()) == {torch.float32} and bf16_types.keys() == fp32_types.keys()
