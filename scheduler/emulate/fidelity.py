"""Emulation fidelity guard: is the forwarding plane (not the shaped links) the bottleneck?

With the Open vSwitch userspace datapath every bridge shares one forwarding thread, so the whole
fabric has about one core of forwarding budget (docs/calibration.md#forwarding-budget). When ``ovs-vswitchd``
runs near a full core, or the machine as a whole is busy, transfer times measure the emulator
rather than the emulated network. :class:`CpuMonitor` samples both in a background thread::

    mon = CpuMonitor()
    mon.start()
    ...                                   # run the experiment
    report = mon.stop()                   # JSON-able dict; report["forwarding_saturated"]

Per-process CPU is in percent of one core (a process using two full cores reads 200); the
machine total is the average over all cores (0..100), as ``psutil`` reports them.
"""
from __future__ import annotations

import re
import statistics
import subprocess
import threading

import numpy as np
import psutil  # type: ignore[import-untyped]  # types-psutil is not in requirements-dev.txt

OVS_PROCESS = "ovs-vswitchd"
OVS_SATURATED_PERCENT = 85.0
"""ovs-vswitchd p95 at or above this (percent of one core) means forwarding is saturated."""
TOTAL_SATURATED_PERCENT = 95.0
"""Machine-wide CPU p95 at or above this (percent of all cores) means the host is saturated."""


class CpuMonitorError(RuntimeError):
    """The monitor was used out of order (started twice, stopped before start)."""


def _stats(values: list[float], with_p95: bool = True) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, **({"p95": 0.0} if with_p95 else {}), "max": 0.0}
    arr = np.asarray(values, dtype=float)
    out = {"mean": round(float(arr.mean()), 2)}
    if with_p95:
        out["p95"] = round(float(np.percentile(arr, 95)), 2)
    out["max"] = round(float(arr.max()), 2)
    return out


def saturation_warning(ovs_p95: float, total_p95: float, samples: int) -> tuple[bool, str | None]:
    """(saturated, warning) from the p95 figures; pure, so the thresholds are testable."""
    if samples == 0:
        return False, "no CPU samples were taken (monitor stopped before its first interval)"
    reasons = []
    if ovs_p95 >= OVS_SATURATED_PERCENT:
        reasons.append(f"{OVS_PROCESS} p95 {ovs_p95:.0f}% of one core (>= {OVS_SATURATED_PERCENT:.0f}%)")
    if total_p95 >= TOTAL_SATURATED_PERCENT:
        reasons.append(f"machine CPU p95 {total_p95:.0f}% (>= {TOTAL_SATURATED_PERCENT:.0f}%)")
    if not reasons:
        return False, None
    return True, ("forwarding saturated: " + "; ".join(reasons) + ". Measured transfer times reflect the "
                  "emulator's CPU budget, not the emulated network: lower the scale or raise time_scale.")


CPU_SAMPLE_INTERVAL_S = 0.5
"""Default CPU sampling period, s: fine enough for a p95 over runs of tens of seconds (not the controller's poll)."""


class CpuMonitor:
    """Samples the CPU of every ``ovs-vswitchd`` process and of the whole machine in a thread."""

    def __init__(self, interval_s: float = CPU_SAMPLE_INTERVAL_S) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: dict[int, psutil.Process] = {}
        self._ovs: list[float] = []
        self._total: list[float] = []
        self._ovs_seen = False

    # ------------------------------------------------------------------ sampling
    def _scan(self) -> None:
        """Track every running ovs-vswitchd (new ones are primed: their first reading is 0)."""
        for proc in psutil.process_iter(["name"]):
            if proc.info.get("name") == OVS_PROCESS and proc.pid not in self._procs:
                try:
                    proc.cpu_percent(None)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self._procs[proc.pid] = proc

    def _sample(self) -> None:
        ovs = 0.0
        for pid, proc in list(self._procs.items()):
            try:
                ovs += proc.cpu_percent(None)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                del self._procs[pid]
        self._ovs_seen = self._ovs_seen or bool(self._procs)
        self._ovs.append(ovs)
        self._total.append(psutil.cpu_percent(None))
        if not self._procs:
            self._scan()  # ovs-vswitchd restarted (or not yet running)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    # ------------------------------------------------------------------ API
    def start(self) -> None:
        if self._thread is not None:
            raise CpuMonitorError("CpuMonitor already started")
        self._scan()
        psutil.cpu_percent(None)  # prime the machine-wide counter
        self._thread = threading.Thread(target=self._run, name="cpu-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> dict:
        """Stop sampling (joins the thread; idempotent) and return the summary."""
        if self._thread is None:
            raise CpuMonitorError("CpuMonitor.stop() before start()")
        self._stop.set()
        self._thread.join(timeout=max(2.0, 2 * self.interval_s))
        ovs = _stats(self._ovs)
        total = _stats(self._total)
        saturated, warning = saturation_warning(ovs["p95"], total["p95"], len(self._total))
        if not self._ovs_seen and warning is None:
            warning = f"no {OVS_PROCESS} process was found: its CPU reads 0"
        return {
            "ovs_vswitchd_cpu_percent": ovs,
            "total_cpu_percent": {"mean": total["mean"], "max": total["max"]},
            "cores": psutil.cpu_count() or 1,
            "samples": len(self._total),
            "forwarding_saturated": saturated,
            "warning": warning,
        }

    def __enter__(self) -> CpuMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None and not self._stop.is_set():
            self.stop()


# ----------------------------------------------------------------------------- latency probe
RTT_SATURATION_FACTOR = 3.0
"""The datapath counts as saturated when the probe's median RTT during the run exceeds this
multiple of its idle median (and the absolute margin below): every packet then waits for the
forwarding thread, so measured times are the emulator's, not the emulated network's."""
RTT_SATURATION_MARGIN_MS = 1.0

_RTT = re.compile(r"time=([0-9.]+) ms")


def parse_ping_rtts(text: str) -> list[float]:
    """RTTs in ms from ``ping`` output lines."""
    return [float(m.group(1)) for m in _RTT.finditer(text)]


def rtt_verdict(baseline_ms: list[float], run_ms: list[float]) -> tuple[bool, str | None]:
    """(saturated, warning) from idle and in-run probe RTTs; pure, so the thresholds are testable.
    Why not CPU: the userspace datapath's poll loop keeps ovs-vswitchd near 100% of a core as
    soon as any traffic flows, saturated or not (docs/calibration.md#rtt-verdict)."""
    if not baseline_ms or not run_ms:
        return False, "latency probe got no replies: the forwarding verdict is unknown"
    base, run = statistics.median(baseline_ms), statistics.median(run_ms)
    if run > RTT_SATURATION_FACTOR * base and run > base + RTT_SATURATION_MARGIN_MS:
        return True, (f"forwarding saturated: the idle-path probe RTT rose from {base:.2f} ms to a median of "
                      f"{run:.2f} ms during the run, so packets queued for the userspace datapath's "
                      "forwarding thread and measured times are partly the emulator's: raise --time-scale "
                      "or lower --scale")
    return False, None


class RttProbe:
    """Pings between two hosts every ``interval_s`` (a path KV transfers rarely load: two GPUs of
    one server over NVLink) to see whether packets wait for the datapath."""

    def __init__(self, host, ip: str, interval_s: float = 0.2) -> None:
        self.host, self.ip, self.interval_s = host, ip, interval_s
        self._proc = None

    def measure(self, seconds: float) -> list[float]:
        """RTTs (ms) over ``seconds`` on the idle fabric: the baseline."""
        out = self.host.cmd(f"ping -n -c {max(int(seconds / self.interval_s), 1)} -i {self.interval_s} -W 1 {self.ip}")
        return parse_ping_rtts(out)

    def start(self) -> None:
        self._proc = self.host.popen(["ping", "-n", "-i", str(self.interval_s), "-W", "1", self.ip],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> list[float]:
        if self._proc is None:
            return []
        self._proc.terminate()
        try:
            out, _ = self._proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        self._proc = None
        return parse_ping_rtts(out or "")
