"""Resource sampler: per node (psutil) and per GPU (NVML) to a CSV, at a fixed interval.

Runs as a thread beside the work it watches (the single stage's server, each Ray node
task of ray/multinode).  Its own CPU time is measured with ``time.thread_time`` and
written as the last row, so its cost is a number, not a guess.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil

FIELDS = ["t", "node", "cpu_pct", "mem_used_mib", "mem_pct", "net_rx_mb", "net_tx_mb",
          "gpu", "gpu_util_pct", "gpu_mem_used_mib", "gpu_power_w", "gpu_temp_c", "gpu_sm_clock_mhz"]


def visible_indices(cvd: str | None, count: int) -> list[int]:
    """NVML indices this job may use: CUDA_VISIBLE_DEVICES (PCI bus order ordinals), else all.

    NVML ignores CUDA_VISIBLE_DEVICES and lists every GPU of the host; without a cgroup
    device constraint the job's own GPUs are only named by that variable. UUIDs and
    non-numeric entries are left to the caller (matched against NVML UUIDs).
    """
    if cvd is None:
        return list(range(count))
    return [int(x) for x in map(str.strip, cvd.split(",")) if x.isdigit() and int(x) < count]


def _gpu_handles() -> list[tuple[int, Any]]:
    """(NVML index, handle) of this job's GPUs: CUDA_VISIBLE_DEVICES when set (NVML lists the whole host)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        wanted = visible_indices(os.environ.get("CUDA_VISIBLE_DEVICES"), pynvml.nvmlDeviceGetCount())
        return [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in wanted]
    except Exception:  # no driver / no GPU: node rows only
        return []


def _gpu_row(i: int, h: Any) -> dict[str, Any]:
    import pynvml

    return {"gpu": i, "gpu_util_pct": pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
            "gpu_mem_used_mib": pynvml.nvmlDeviceGetMemoryInfo(h).used // 2**20,
            "gpu_power_w": round(pynvml.nvmlDeviceGetPowerUsage(h) / 1000, 1),
            "gpu_temp_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
            "gpu_sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)}


class Sampler(threading.Thread):
    def __init__(self, path: Path, node: str, interval_s: float = 1.0) -> None:
        super().__init__(name=f"monitor-{node}", daemon=True)
        self.path, self.node, self.interval = path, node, interval_s
        self._stop_event = threading.Event()
        self.cpu_s = 0.0
        self.samples = 0

    def run(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        gpus = _gpu_handles()
        net0 = psutil.net_io_counters()
        psutil.cpu_percent(None)
        with open(self.path, "w", newline="") as fh:
            w = csv.DictWriter(fh, FIELDS)
            w.writeheader()
            t0 = time.time()
            while not self._stop_event.wait(self.interval):
                c0 = time.thread_time()
                net = psutil.net_io_counters()
                vm = psutil.virtual_memory()
                base = {"t": round(time.time() - t0, 2), "node": self.node, "cpu_pct": psutil.cpu_percent(None),
                        "mem_used_mib": (vm.total - vm.available) // 2**20, "mem_pct": vm.percent,
                        "net_rx_mb": round((net.bytes_recv - net0.bytes_recv) / 1e6, 3),
                        "net_tx_mb": round((net.bytes_sent - net0.bytes_sent) / 1e6, 3)}
                rows = [base | _gpu_row(i, h) for i, h in gpus] or [base]
                w.writerows(rows)
                fh.flush()
                self.samples += 1
                self.cpu_s += time.thread_time() - c0
        self.path.chmod(0o644)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join(timeout=10)
        per = self.cpu_s / max(self.samples, 1)
        return {"monitor_samples": self.samples, "monitor_cpu_ms_per_sample": round(per * 1000, 3),
                "monitor_cpu_pct": round(100 * per / self.interval, 3)}
