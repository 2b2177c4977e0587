"""erlib.distributed: no-ops in one process; under 2 gloo processes every batch estimator on the gathered batch equals
the single-process value on the concatenated batch, and its gradients (after DDP's averaging) equal the
single-process gradients."""

from __future__ import annotations

import pytest
import torch

from erlib import distributed as D
from tests.conftest import torchrun
from tests.ddp.shared import ESTIMATORS, global_batch


def test_single_process_helpers_are_no_ops():
    x = torch.randn(4, 3, requires_grad=True)
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1 and D.is_main_process()
    assert D.gather(x) is x and D.all_reduce_mean(x) is x and D.all_reduce_sum(x) is x


@pytest.mark.slow
def test_two_processes_equal_one_process_on_concatenated_batch(tmp_path):
    torchrun("tests/ddp/estimators_worker.py", str(tmp_path), nproc=2)
    z1, z2, p = [t.clone().requires_grad_(True) for t in global_batch()]
    single = {name: fn(z1, z2, p) for name, fn in ESTIMATORS.items()}
    torch.stack(list(single.values())).sum().backward()
    rows = z1.shape[0] // 2
    for r in range(2):
        out = torch.load(tmp_path / f"rank{r}.pt")
        assert out["world"] == 2
        assert float(out["mean"]) == pytest.approx(0.5)  # all_reduce_mean of the ranks 0 and 1
        for name, value in single.items():
            assert float(out["values"][name]) == pytest.approx(value.item(), rel=1e-12, abs=1e-12), name
        for grad, full in zip(out["grads"], (z1.grad, z2.grad, p.grad)):
            # the gather's backward sums every rank's copy of the loss; DDP then divides by the world size
            torch.testing.assert_close(grad / 2, full[r * rows : (r + 1) * rows], rtol=1e-10, atol=1e-12)
