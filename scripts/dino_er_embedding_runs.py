"""Train DINO-ER with the entropy on its embeddings (``entropy_on="embedding"``) at the preset's tau_base and at
tau_base = 0, in the run folders the notebooks and ``python -m erlib claims`` use, for the seeds given.

These runs answer how the embedding variant compares with the default DINO-ER and with DINO (claim C3's runs); they
are outside the claims, so ``claims`` does not train them. Export them with the claims' runs:

    python scripts/dino_er_embedding_runs.py small 0,1,2
    python -m erlib claims --preset small --seeds 0,1,2 --no-train --export results/<set> \\
        --extra-role dino-er@entropy_on=embedding --extra-role dino-er@entropy_on=embedding,tau_base=0.0
"""

from __future__ import annotations

import sys
import time

from erlib import claims as C
from erlib.presets import PRESET_TABLE, default_runs_dir, ensure_run, spec_config

SPECS = (
    C.RunSpec("dino", True, {"entropy_on": "embedding"}),
    C.RunSpec("dino", True, {"entropy_on": "embedding", **C.C3_TAU0}),
)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in PRESET_TABLE:
        print(f"usage: python {sys.argv[0]} PRESET SEEDS  (PRESET one of {', '.join(PRESET_TABLE)}; SEEDS e.g. 0,1,2)")
        return 2
    preset, seeds = argv[0], [int(s) for s in argv[1].split(",")]
    for seed in seeds:
        runs_dir = default_runs_dir(preset, seed)
        for spec in SPECS:
            start = time.perf_counter()
            run = ensure_run(spec_config(preset, spec, runs_dir, seed=seed, progress=False))
            print(
                f"seed {seed} {spec.name}: kNN200 {C.untrained_knn(run):.3f} -> {C.final_knn(run):.3f}, "
                f"monitor eta {C.final_value(run, 'monitor_eta_online'):.3f}, "
                f"{(time.perf_counter() - start) / 60:.1f} min",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
