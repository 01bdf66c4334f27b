"""Scan every base x convention on digits_mlp to place its default grid (service.domain.conventions).

One seed, cosine schedule, 30 epochs, batch 64, with the packed trainer: an 8 x 8 (or NUM x NUM) grid over wide
ranges (lr: 6 decades around the base's usual step; wd: 7 decades per convention). Prints, per
name, the best cell, and writes every cell as JSON (the defaults in service.domain.conventions are
placed so that the best cell lies inside).

    .venv/bin/python scripts/calibrate_conventions.py results/conventions/calibration.json [NUM [NAME ...]]
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import torch

from service.domain.conventions import BASES, CONVENTIONS
from workers import bases
from workers.packed import TrialConfig, train_block

LR = {"sgd": (1e-4, 3.0), "adam": (1e-5, 1.0), "radam": (1e-5, 1.0), "nadam": (1e-5, 1.0),
      "lion": (1e-6, 1e-1), "adafactor": (1e-4, 3.0), "muon": (1e-4, 3.0)}
WD = {"l2": (1e-7, 1.0), "schedule": (1e-7, 1.0), "constant": (1e-7, 1.0), "lr": (1e-5, 100.0),
      "corrected": (1e-5, 100.0)}


def main(out: str, names: list[str], num: int) -> None:
    # Muon's Newton-Schulz in float32: bfloat16 matmuls are ~10x slower on a CPU without native
    # bfloat16, and the optimum's place does not depend on the last bits of the iteration.
    bases.NS_DTYPE = torch.float32
    rows = {}
    try:
        with open(out) as f:
            rows = json.load(f)
    except (OSError, ValueError):
        pass
    for name in names:
            base, conv = name.split(":")
            lrs = np.geomspace(*LR[base], num)
            wds = np.geomspace(*WD[conv], num)
            configs = [TrialConfig(float(lr), float(wd), 0, (i, j)) for i, lr in enumerate(lrs)
                       for j, wd in enumerate(wds)]
            t = time.perf_counter()
            res = train_block("digits_mlp", name, configs, epochs=30, batch_size=64,
                              schedule={"name": "cosine"})
            err = np.full((num, num), np.inf)
            for r in res:
                if not r.diverged and math.isfinite(r.val_error):
                    err[r.key] = r.val_error
            i, j = np.unravel_index(np.argmin(err), err.shape)
            rows[name] = {"lr": lrs.tolist(), "wd": wds.tolist(), "val_error": err.tolist(),
                          "best": [float(lrs[i]), float(wds[j]), float(err[i, j])],
                          "seconds": time.perf_counter() - t}
            print(f"{name:20s} best lr={lrs[i]:.3g} wd={wds[j]:.3g} err={err[i, j]:.4f} "
                  f"({time.perf_counter() - t:.1f}s)", flush=True)
            with open(out, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    # usage: OUT.json [NUM [NAME ...]]; default every BASE:CONVENTION on an 8 x 8 grid
    out = sys.argv[1] if len(sys.argv) > 1 else "conventions-calibration.json"
    num = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    names = sys.argv[3:] or [f"{b}:{c}" for b in BASES for c in CONVENTIONS]
    main(out, names, num)
