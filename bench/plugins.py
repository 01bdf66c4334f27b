"""What a plugin rule costs in the packed trainer: a packed direction and a torch.optim fallback
against a built-in base, on the example plugin's task (examples/decouple-plugin-example).

    .venv/bin/python bench/plugins.py [--quick]

One block of K configs of ``wine_mlp`` (133 training samples, batch 16, MLP 13-32-3 with
BatchNorm) per rule, trained in this process one after the other, best of ``--repeats``:

- ``adam`` (built-in, the whole-stack update of ``workers.packed.StackOptimizer``): the baseline;
- ``signum`` (a plugin's packed direction, ``PluginStackOptimizer``: a few (K, P) kernels);
- ``adamax`` (a plugin naming ``torch.optim.Adamax``, ``TorchFallbackOptimizer``: one optimizer
  instance per config, K ``step()`` calls per step).

The CPU model is printed beside the RESULT line (every ratio depends on it). Last line:
``RESULT signum_vs_adam=... adamax_fallback_vs_adam=...``: wall-time ratios (above 1 = slower).
Needs the example plugin installed (``pip install --no-deps -e examples/decouple-plugin-example``;
the test suite installs it); without it, it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cpu import cpu_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 configs, 2 epochs, 1 repeat")
    ap.add_argument("--configs", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    k, epochs, repeats = (8, 2, 1) if args.quick else (args.configs, args.epochs, args.repeats)

    from service.domain.plugins import registry
    from workers.packed import TrialConfig, train_block

    if "wine_mlp" not in registry().tasks:
        # As make gpu-check without CUDA: say what is missing and skip (make bench-quick goes on).
        print("bench/plugins.py: skipped, the example plugin is not installed "
              "(.venv/bin/pip install --no-deps -e examples/decouple-plugin-example)")
        return 0
    configs = [TrialConfig(10 ** (-3 + 2 * i / max(1, k - 1)), 1e-3, i) for i in range(k)]
    for name in ("adam", "signum", "adamax"):  # load data; first use of each path (torch.optim imports on its first step)
        train_block("wine_mlp", name, configs[:2], epochs=1)
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name in ("adam", "signum", "adamax"):
            t = time.perf_counter()
            train_block("wine_mlp", name, configs, epochs=epochs)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    steps = epochs * -(-133 // 16)
    print(f"CPU: {cpu_model()}; {k} configs x {epochs} epochs ({steps} steps), best of {repeats}")
    for name, s in best.items():
        print(f"  {name:<7} {s:7.3f} s  {1e3 * s / steps:6.2f} ms/step")
    print(f"RESULT signum_vs_adam={best['signum'] / best['adam']:.2f} "
          f"adamax_fallback_vs_adam={best['adamax'] / best['adam']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
