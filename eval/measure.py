"""Peak memory, device synchronisation and environment facts for eval.rd and eval.bench.

Why a module: a speed or memory number is meaningless without the machine,
the library versions and the exact method that produced it, and both
``eval.rd`` and ``eval.bench`` must measure the same way.

Peak memory (CPU): the process's peak resident set size (RSS). On Linux the
kernel's high-water mark is reset before each measured phase (writing ``5``
to ``/proc/self/clear_refs``) and read back from ``VmHWM``, so the peak
belongs to that phase alone. Where that is impossible (not Linux, or the
file is not writable) ``resource.getrusage(...).ru_maxrss`` is used, which
is the peak over the *whole process lifetime*; ``scope`` in the result says
which. ``tracemalloc`` is deliberately not used: it does not see torch's or
FFmpeg's native allocations, which are nearly all the memory a codec uses.
RSS counts everything the process holds, including the input frames.

Peak memory (CUDA): ``torch.cuda.max_memory_allocated`` after
``torch.cuda.reset_peak_memory_stats``: tensors allocated by torch on that
device only (not the CUDA context, not the caching allocator's slack).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

__all__ = ["PeakMemory", "environment", "parse_size", "sync"]

_MIB = 1024.0 * 1024.0


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (argparse type) -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w < 1 or h < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so wall-clock timings cover the work itself."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _current_rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib / 1024.0
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / _MIB


def _lifetime_peak_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB elsewhere


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.result()``: peak memory of the block."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._result: dict[str, Any] = {}

    def __enter__(self) -> PeakMemory:
        sync(self.device)
        self._windowed = _reset_rss_peak()
        self._start_rss = _current_rss_mib()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_cuda = torch.cuda.memory_allocated(self.device) / _MIB
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        sync(self.device)
        hwm = _status_kib("VmHWM") if self._windowed else None
        peak = hwm / 1024.0 if hwm is not None else _lifetime_peak_mib()
        self._result = {
            "peak_rss_mib": round(peak, 1),
            "start_rss_mib": None if self._start_rss is None else round(self._start_rss, 1),
            "rss_scope": "phase" if hwm is not None else "process-lifetime",
            "rss_method": "/proc/self/clear_refs + VmHWM" if hwm is not None else "getrusage ru_maxrss",
        }
        if self.device.type == "cuda":
            self._result["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(self.device) / _MIB, 1)
            self._result["cuda_start_allocated_mib"] = round(self._start_cuda, 1)

    def result(self) -> dict[str, Any]:
        """Peak (and starting) RSS in MiB, how it was measured, and CUDA peaks on a GPU."""
        return dict(self._result)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str | None:
    """``<commit>[+dirty]`` of the checkout eval/ lives in, or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Versions, machine and thread settings a result depends on (for results.json)."""
    import av
    import numpy as np

    import neurocodec

    device = torch.device(device)
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "git": _git_revision(),
        "versions": {
            "python": platform.python_version(),
            "neurocodec": neurocodec.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "av": av.__version__,
            "ffmpeg": {k: ".".join(map(str, v)) for k, v in av.library_versions.items()},
        },
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "device": str(device),
    }
    if device.type == "cuda":
        env["machine"]["gpu"] = torch.cuda.get_device_name(device)
        env["versions"]["cuda"] = torch.version.cuda
    return env
