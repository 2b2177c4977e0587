"""torchrun worker: every batch estimator on the gathered global batch, with gradients into this rank's shard.

Usage: torchrun --standalone --nproc_per_node=W tests/ddp/estimators_worker.py OUT_DIR
Writes OUT_DIR/rank<r>.pt with the values and the gradient w.r.t. this rank's rows.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from erlib import distributed as D
from tests.ddp.shared import ESTIMATORS, global_batch

dist.init_process_group("gloo")
rank, world = D.rank(), D.world_size()
z1, z2, p = global_batch()
rows = z1.shape[0] // world
mine = slice(rank * rows, (rank + 1) * rows)
local = [t[mine].clone().requires_grad_(True) for t in (z1, z2, p)]
gathered = [D.gather(t) for t in local]
values = {name: fn(*gathered) for name, fn in ESTIMATORS.items()}
torch.stack(list(values.values())).sum().backward()
torch.save(
    {
        "values": {k: v.detach() for k, v in values.items()},
        "grads": [t.grad for t in local],
        "world": world,
        "mean": D.all_reduce_mean(torch.tensor([float(rank)], dtype=torch.float64)),
    },
    Path(sys.argv[1]) / f"rank{rank}.pt",
)
dist.destroy_process_group()
