"""The CPU a benchmark ran on, in one line: every ratio to a hardware peak depends on it.

A virtual machine often shows only a generic model name ("AMD EPYC", "Intel(R) Xeon(R)
Processor"), which hides what sets the sgemm peak: so the family and model numbers and the widest
vector instructions the CPU reports (``/proc/cpuinfo`` flags) are printed with it. No torch import,
so the analysis-only benchmarks can use it too.
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """E.g. "AMD EPYC (family 23, model 1; AVX2, no AVX-512)"; the platform's string elsewhere."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in fields:
                fields[key] = value.strip()
            if line.strip() == "" and fields:
                break  # the first processor is enough
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "flags" not in fields:
        return name
    flags = set(fields["flags"].split())
    isa = ("AVX-512" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else "no AVX2")
    if "amx_tile" in flags:
        isa += ", AMX"
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}; {isa})"
