"""torchrun worker: one training forward/backward of every method case on this rank's shard of the global batch.

Usage: torchrun --standalone --nproc_per_node=W tests/ddp/methods_worker.py OUT_DIR
Writes OUT_DIR/rank<r>.pt: per case, this rank's loss and its mean over ranks, the metrics, the parameter gradients
averaged over ranks exactly as DDP does (all-reduce sum, then / W), and DINO's center after the forward.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from erlib import distributed as D
from tests.ddp.methods_shared import CASES, GLOBAL_BATCH, global_views, run_case

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = D.rank(), D.world_size()
rows = GLOBAL_BATCH // world
mine = slice(rank * rows, (rank + 1) * rows)
results = {}
for case in CASES:
    out = run_case(case, [v[mine].clone() for v in global_views(case)])
    for grad in out["grads"].values():  # what DistributedDataParallel does to the parameter gradients
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        grad /= world
    out["loss_mean"] = D.all_reduce_mean(out["loss"])
    results[case] = out
torch.save({"world": world, "rank": rank, "results": results}, Path(sys.argv[1]) / f"rank{rank}.pt")
dist.destroy_process_group()
