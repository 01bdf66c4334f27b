"""Does capping the instruction set make the wide conv engine faster on this CPU?

    .venv/bin/python bench/isa_caps.py [--quick] [--steps N] [--repeats N]

On the AVX-512 Xeon the conv tasks' grouped convolutions (8-32 channels per config) ran at
0.15-0.25 of the sgemm peak, on AVX2 EPYCs at 0.5-0.9 (``bench/conv_forms.py``,
``docs/design-notes.md``). One hypothesis: a group of 8-16 float32 channels fills one 256-bit
register but only half of a 512-bit one, so the AVX-512 kernels run at half width. Both libraries
that run a conv step read an instruction-set cap from the environment once per process:

- ``ONEDNN_MAX_CPU_ISA`` (oneDNN: the convolutions, forward and backward);
- ``ATEN_CPU_CAPABILITY`` (PyTorch's own vectorized kernels: BatchNorm, pooling, elementwise).

MKL's sgemm (the linear layers, the peak) reads neither. So each setting below runs in a child
process of its own: it times the wide engine's training steps, 32 AdamW configs x batch 64 of
mnist5k_cnn and of mnist5k_resnet, in chunks of ``WIDE_CHUNK`` (``PackedRun.train_epoch`` over
``--steps`` batches, after one warm-up epoch; best of ``--repeats``, CPU time of one thread,
denormals flushed), and prints which kernels oneDNN chose for one grouped convolution (its verbose
log: e.g. ``brg_conv_fwd:avx2``). A cap above what the CPU has changes nothing; the control row
caps oneDNN at SSE4.1 and must come out slower, or the caps were not honoured.

If a cap wins on some CPU, setting the same variable in the environment of ``decouple worker`` is
enough: a local Ray's training processes inherit it. Results go to ``docs/design-notes.md``.

Last line: ``RESULT cnn_default_vs_best=... resnet_default_vs_best=... best=NAME
control_slowdown=...`` (default's step time over the fastest setting's; above 1 a cap helps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._cpu import cpu_model  # noqa: E402

#: (name, environment) of every setting; "control" must be slower than "default".
SETTINGS: list[tuple[str, dict[str, str]]] = [
    ("default", {}),
    ("onednn-avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("aten-avx2", {"ATEN_CPU_CAPABILITY": "avx2"}),
    ("both-avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}),
    ("control-sse41", {"ONEDNN_MAX_CPU_ISA": "SSE41"}),
]
TASKS = ("mnist5k_cnn", "mnist5k_resnet")
CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def conv_kernels() -> list[str]:
    """oneDNN's implementation names for one grouped convolution (mnist5k_cnn's conv2, 4 configs),
    forward and both gradients, from its verbose log (printed by the library on fd 1)."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(64, 4 * 16, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4 * 32, 16, 3, 3, requires_grad=True)
    sys.stdout.flush()
    r, wfd = os.pipe()
    saved = os.dup(1)
    os.dup2(wfd, 1)
    try:
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            y = F.conv2d(x, w, None, 1, 1, 1, 4)
            y.backward(torch.ones_like(y))
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(wfd)
        os.close(saved)
    with os.fdopen(r) as log:
        lines = log.read().splitlines()
    kernels = []
    for line in lines:
        f = line.split(",")
        if len(f) > 7 and f[2] == "primitive" and f[3] == "exec" and f[5] == "convolution":
            kernels.append(f"{f[7]}={f[6]}")
    return kernels


def child(steps: int, repeats: int) -> dict:
    """One setting's measurements (run in a process started with that setting's environment)."""
    import torch

    from bench.trainer import BATCH, OPT, axis
    from workers.packed import PackedRun, TrialConfig, cpu_training, make_spec
    from workers.tasks import get_task

    out: dict = {"aten_capability": torch.backends.cpu.get_cpu_capability(), "kernels": conv_kernels()}
    configs = [TrialConfig(lr, wd, 0) for lr in axis("lr", 8) for wd in axis("wd", 4)]
    with cpu_training(1):
        for task in TASKS:
            t = get_task(task)
            data = t.load_data(steps * BATCH, BATCH)
            spec = make_spec(t, OPT, epochs=1, batch_size=BATCH, schedule={"name": "constant"}, wd_normalized=False, decay_on="all",
                             n_train=data.n_train)
            run = PackedRun(spec, configs, data, torch.device("cpu"))
            run.train_epoch(0)  # warm-up: oneDNN creates its kernels, the allocator its pages
            best = float("inf")
            for _ in range(repeats):
                c0 = time.process_time()
                run.train_epoch(0)
                best = min(best, (time.process_time() - c0) / steps)
            out[task] = best
    return out


def run_setting(env: dict[str, str], steps: int, repeats: int) -> dict:
    full = {k: v for k, v in os.environ.items() if k not in CAP_VARIABLES}
    full.update(env)
    proc = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps), "--repeats", str(repeats)],
                          env=full, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"the child with {env or 'no cap'} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="training steps timed per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="4 steps, best of 2")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats = 4, 2
    if args.child:
        print(json.dumps(child(args.steps, args.repeats)))
        return 0
    print(f"CPU: {cpu_model()}; 32 AdamW configs x batch 64, one thread, CPU s per step, best of {args.repeats}")
    print(f"{'setting':15s} {'ATen':>8s} {'cnn s':>8s} {'resnet s':>9s}  oneDNN kernels (conv2 of mnist5k_cnn)")
    res: dict[str, dict] = {}
    for name, env in SETTINGS:
        r = res[name] = run_setting(env, args.steps, args.repeats)
        print(f"{name:15s} {r['aten_capability']:>8s} {r['mnist5k_cnn']:8.3f} {r['mnist5k_resnet']:9.3f}  "
              f"{' '.join(r['kernels'])}")
    base = res["default"]
    capped = [n for n, _ in SETTINGS if not n.startswith("control")]
    best = min(capped, key=lambda n: res[n]["mnist5k_cnn"] + res[n]["mnist5k_resnet"])
    control = res["control-sse41"]["mnist5k_cnn"] / base["mnist5k_cnn"]
    if control < 1.05:
        print("warning: the SSE4.1 control was not slower: the caps may not have been honoured")
    print(f"RESULT cnn_default_vs_best={base['mnist5k_cnn'] / res[best]['mnist5k_cnn']:.3f} "
          f"resnet_default_vs_best={base['mnist5k_resnet'] / res[best]['mnist5k_resnet']:.3f} "
          f"best={best} control_slowdown={control:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
