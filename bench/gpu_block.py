"""The packed trainer on a GPU: the largest block that fits, against the GPU's own matmul peak.

    .venv/bin/python bench/gpu_block.py [--epochs N] [--quick]

Without CUDA it prints why and exits 0 (``make gpu-check`` runs it on any machine). With CUDA,
per task (digits_mlp, mnist5k_cnn, mnist5k_resnet): the block size ``auto_block_size`` gives for
the GPU (half its free memory), one AdamW block of that many configs from the default axes,
``--epochs`` full epochs (default 2), timed after a one-epoch warm-up on a small block; printed:
trials x epochs per second and the executed FLOPs (``bench/trainer.py``'s count) over the
float32 matmul peak measured in this process (8192^3). Last line:
``RESULT gpu=... <task>_trial_epochs_per_second=... <task>_fraction_of_gpu_matmul_peak=...``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

TASKS = ("digits_mlp", "mnist5k_cnn", "mnist5k_resnet")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one epoch (what make bench-quick passes)")
    args = ap.parse_args()
    if args.quick:
        args.epochs = 1
    if not torch.cuda.is_available():
        print("gpu-check: skipped, no CUDA device here (torch.cuda.is_available() is False; "
              f"torch {torch.__version__}, CUDA build {torch.version.cuda})")
        return 0
    import numpy as np
    from trainer import matmul_peak, model_flops  # bench/trainer.py

    from service.domain.catalog import DEFAULT_GRIDS
    from workers.packed import TrialConfig, auto_block_size, train_block
    from workers.tasks import get_task

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    peak = matmul_peak(dev, n=8192)
    print(f"GPU: {name}; float32 matmul peak {peak / 1e12:.1f} TFLOP/s (8192^3, this process)")
    out = [f"gpu={name.replace(' ', '_')}"]
    ax = DEFAULT_GRIDS["adamw"]
    for task in TASKS:
        K = auto_block_size(task, dev)
        n = math.ceil(math.sqrt(K))
        lrs = np.logspace(math.log10(ax["lr"].min), math.log10(ax["lr"].max), n)
        wds = np.logspace(math.log10(ax["wd"].min), math.log10(ax["wd"].max), n)
        configs = [TrialConfig(float(lr), float(wd), 0) for lr in lrs for wd in wds][:K]
        train_block(task, "adamw", configs[:8], epochs=1, device=dev)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_block(task, "adamw", configs, epochs=args.epochs, device=dev)
        torch.cuda.synchronize()
        s = time.perf_counter() - t0
        data = get_task(task).load_data()
        if task == "digits_mlp":
            from trainer import executed_flops

            flops, _ = executed_flops(K, args.epochs, data.n_train, int(data.x_val.shape[0]))
        else:
            train_f, eval_f = model_flops(task)
            flops = K * args.epochs * (data.n_train * train_f + int(data.x_val.shape[0]) * eval_f)
        te = K * args.epochs / s
        print(f"{task}: block of {K} configs x {args.epochs} epochs in {s:.2f} s = {te:.1f} trials x epochs "
              f"per second, {flops / s / 1e12:.3f} TFLOP/s = {flops / s / peak:.3f} of the matmul peak")
        out += [f"{task}_trial_epochs_per_second={te:.1f}", f"{task}_fraction_of_gpu_matmul_peak={flops / s / peak:.3f}"]
    print("RESULT " + " ".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
