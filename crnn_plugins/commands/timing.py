"""What every ``crnn bench`` document records beside its timings: the spread of a case's
repeats, the machine (CPU, threads, versions, the fused kernel's CPU path) and its load."""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import torch


def load_avg() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def spread(samples: list[float]) -> dict[str, float]:
    """Quartiles of the repeats and the interquartile range relative to the median."""
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = samples[0]
    med = statistics.median(samples)
    return {"q1_ms": round(q1, 4), "q3_ms": round(q3, 4), "iqr_rel": round((q3 - q1) / med, 4) if med > 0 else 0.0}


def machine_info(device: torch.device) -> dict[str, Any]:
    """The CPU, thread count, versions and platform, the GPU on CUDA, and the fused kernel's CPU path."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    from ..fast_weights import fused as ff

    info["cpu_kernel_path"] = ff.build_info().get("cpu_isa")  # which compiled path the fused figures used
    return info
