"""Does capping the instruction set make the wide conv engine faster on this CPU?

    .venv/bin/python bench/isa_caps.py [--quick] [--steps N] [--repeats N]

On the AVX-512 Xeon the conv tasks' grouped convolutions (8-32 channels per config and group)
ran at 0.15-0.25 of the sgemm peak; on two AVX2 EPYCs the layers after the first ran at 0.25-0.91
of theirs (``bench/conv_forms.py``, ``docs/design-notes.md``). One hypothesis: the AVX-512 kernels
block channels by 16 float32 lanes (a 512-bit register) and more, so a group of 8 channels fills
half a register and groups of 16-32 leave blocks partly empty, where 8-lane AVX2 kernels are full.
Both libraries that run a conv step read an instruction-set cap from the environment once per
process:

- ``ONEDNN_MAX_CPU_ISA`` (oneDNN: the convolutions, forward and backward);
- ``ATEN_CPU_CAPABILITY`` (PyTorch's own vectorized kernels: BatchNorm, pooling, elementwise).

MKL's sgemm (the linear layers, the peak) reads neither. So each setting below runs in a child
process of its own: it times the wide engine's training steps, 32 AdamW configs x batch 64 of
mnist5k_cnn and of mnist5k_resnet, in each task's chunks (``Task.wide_chunk``; ``PackedRun.train_epoch`` over
``--steps`` batches, after one warm-up epoch; best of ``--repeats``, the process's CPU time with one
torch thread, denormals flushed), and prints which kernels oneDNN chose, under the same thread
setting, for one grouped convolution with a bias (its verbose log: e.g. ``brg_conv_fwd:avx2``).
The default runs first and last. A cap above what the CPU has changes nothing: a capped setting
whose kernels and ATen capability are the default's is a repeat of the default, and those repeats
give the noise (their spread) that a real cap's gain must exceed. A capped row whose kernels still
name ``avx512`` was not honoured (an error), and the control, oneDNN at SSE4.1, must come out slower.

If a cap wins on some CPU, setting the same variable in the environment of ``decouple worker`` is
enough: a local Ray's training processes inherit it. Results go to ``docs/design-notes.md``.

Last line: ``RESULT cnn_default_vs_best=... resnet_default_vs_best=... cnn_best=NAME
resnet_best=NAME default_spread=... control_slowdown=...``: per task, the mean default step time
over the fastest setting's among the caps that changed a kernel (above 1 a cap helps; 1.000 and
``none`` where no cap changed one), and the spread of the runs of the default kernels.
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

#: (name, environment) of every setting. "default" runs again at the end (its noise);
#: "control" must be slower than the default.
SETTINGS: list[tuple[str, dict[str, str]]] = [
    ("default", {}),
    ("onednn-avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("aten-avx2", {"ATEN_CPU_CAPABILITY": "avx2"}),
    ("both-avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}),
    ("control-sse41", {"ONEDNN_MAX_CPU_ISA": "SSE41"}),
    ("default-again", {}),
]
CAPPED = ("onednn-avx2", "aten-avx2", "both-avx2")
TASKS = ("mnist5k_cnn", "mnist5k_resnet")
#: Removed from every child's environment before its setting is applied (DNNL_* are oneDNN's older
#: names; a verbose log would slow the timed steps).
CLEARED = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_VERBOSE", "DNNL_VERBOSE")


def conv_kernels() -> list[str]:
    """oneDNN's implementation names for one grouped convolution as the engine runs it
    (mnist5k_cnn's conv2 with its bias, a chunk of 4 configs, channels-last), forward and both
    gradients, from its verbose log (printed by the library on fd 1, caught in a file)."""
    import tempfile

    import torch
    import torch.nn.functional as F

    x = torch.randn(64, 4 * 16, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4 * 32, 16, 3, 3, requires_grad=True)
    b = torch.randn(4 * 32, requires_grad=True)
    sys.stdout.flush()
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                y = F.conv2d(x, w, b, 1, 1, 1, 4)
                y.backward(torch.ones_like(y))
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
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

    configs = [TrialConfig(lr, wd, 0) for lr in axis("lr", 8) for wd in axis("wd", 4)]
    out: dict = {"aten_capability": torch.backends.cpu.get_cpu_capability()}
    with cpu_training(1):
        out["kernels"] = conv_kernels()
        for task in TASKS:
            t = get_task(task)
            data = t.load_data(steps * BATCH, BATCH)
            spec = make_spec(t, OPT, epochs=1, batch_size=BATCH, schedule={"name": "constant"},
                             wd_normalized=False, decay_on="all", n_train=data.n_train)
            n_steps = -(-data.n_train // BATCH)
            run = PackedRun(spec, configs, data, torch.device("cpu"))
            run.train_epoch(0)  # warm-up: oneDNN creates its kernels, the allocator its pages
            best = float("inf")
            for _ in range(repeats):
                c0 = time.process_time()
                run.train_epoch(0)
                best = min(best, (time.process_time() - c0) / n_steps)
            if len(run.rows) != len(configs):
                raise SystemExit(f"{task}: {len(configs) - len(run.rows)} configs diverged; the steps timed fewer rows")
            out[task] = best
    return out


def run_setting(env: dict[str, str], steps: int, repeats: int) -> dict:
    full = {k: v for k, v in os.environ.items() if k not in CLEARED}
    full.update(env)
    proc = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps), "--repeats", str(repeats)],
                          env=full, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"the child with {env or 'no cap'} failed:\n{proc.stderr[-2000:]}{proc.stdout[-500:]}")
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
    print(f"CPU: {cpu_model()}; 32 AdamW configs x batch 64, one torch thread, CPU s per step, "
          f"best of {args.repeats} x {args.steps} steps")
    print(f"{'setting':15s} {'ATen':>8s} {'cnn s':>8s} {'resnet s':>9s}  oneDNN kernels (conv2 of mnist5k_cnn)")
    res: dict[str, dict] = {}
    for name, env in SETTINGS:
        r = res[name] = run_setting(env, args.steps, args.repeats)
        print(f"{name:15s} {r['aten_capability']:>8s} {r['mnist5k_cnn']:8.3f} {r['mnist5k_resnet']:9.3f}  "
              f"{' '.join(r['kernels'])}", flush=True)
    envs = dict(SETTINGS)
    errors = [f"{n}: oneDNN still ran {k}" for n in CAPPED if "ONEDNN_MAX_CPU_ISA" in envs[n]
              for k in res[n]["kernels"] if "avx512" in k]
    sig = {n: (r["aten_capability"], tuple(r["kernels"])) for n, r in res.items()}
    # A cap that left ATen's capability and oneDNN's kernels as they were cannot change the speed:
    # its runs join the defaults as repeats of the same code, which measure the noise.
    changed = [n for n in CAPPED if sig[n] != sig["default"]]
    same = ["default", "default-again"] + [n for n in CAPPED if n not in changed]
    base = {t: sum(res[n][t] for n in ("default", "default-again")) / 2 for t in TASKS}
    spread = max((max(res[n][t] for n in same) - min(res[n][t] for n in same)) / base[t] for t in TASKS)
    control = res["control-sse41"]["mnist5k_cnn"] / base["mnist5k_cnn"]
    if control < 1.05:
        errors.append(f"the SSE4.1 control was not slower ({control:.2f}x the default): the caps were not honoured")
    print(f"{len(same)} runs of the default kernels ({', '.join(same)}) spread by {spread:.1%}: "
          f"a gain within that is noise")
    if changed:
        best = {t: min(changed, key=lambda n, t=t: res[n][t]) for t in TASKS}
        gain = {t: base[t] / res[best[t]][t] for t in TASKS}
        for t in TASKS:
            print(f"{t}: best cap {best[t]}, default / capped = {gain[t]:.3f}")
    else:
        best, gain = dict.fromkeys(TASKS, "none"), dict.fromkeys(TASKS, 1.0)
        print("every AVX2 cap left the kernels as they were (this CPU has nothing above AVX2): nothing to gain here")
    print(f"RESULT cnn_default_vs_best={gain['mnist5k_cnn']:.3f} resnet_default_vs_best={gain['mnist5k_resnet']:.3f} "
          f"cnn_best={best['mnist5k_cnn']} resnet_best={best['mnist5k_resnet']} default_spread={spread:.3f} "
          f"control_slowdown={control:.2f}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
