"""The peak memory of each phase of a run (summary.json `train.phase_peaks_mb`), so that every run checks
`retune plan`'s per-phase prediction, and its wall time (`train.phase_seconds`: where a run's time went).

The whole-process peak is the kernel's high-water mark of the resident set (VmHWM in /proc/self/status,
what ru_maxrss reports); it is never reset, so other readers of ru_maxrss see the usual number. Each
phase's peak is the larger of two readings: VmRSS sampled every `interval` seconds by a daemon thread
while the phase runs, and VmHWM itself where it rose during the phase (the phase that sets the run's
peak is known exactly; a phase below it to within what a sample can miss). A nested phase
(evaluation inside training) counts in its parent too, in memory and in seconds.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

STATUS = Path("/proc/self/status")


def _status_mb(key: str) -> float:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", STATUS.read_text(), re.M)
    except OSError:
        m = None
    if m is None:  # not Linux: the resource module's peak (the same quantity as VmHWM)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return int(m.group(1)) / 1024


def hwm_mb() -> float:
    """The process's peak resident memory so far, MB."""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    return _status_mb("VmRSS")


class PhasePeaks:
    """`with peaks.phase("load"): ...`; `peaks.peaks` maps each phase to its peak RSS (MB), `peaks.seconds`
    to its wall time (summed when a phase runs more than once)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peaks: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.interval = interval
        self._open: list[str] = []
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        hwm, t0 = hwm_mb(), time.perf_counter()
        self._open.append(name)
        self._note(name, rss_mb())
        self._start()
        try:
            yield
        finally:
            now = hwm_mb()
            if now > hwm:  # the process's peak rose in this phase: its peak is known exactly
                self._note(name, now)
            self._note(name, rss_mb())
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            with self._lock:
                self._open.remove(name)
            if not self._open:
                self._halt()

    def peak_mb(self) -> float:
        """The whole process's peak so far (VmHWM, which the kernel updates lazily: a sample can be above it), MB."""
        with self._lock:
            return max(hwm_mb(), *self.peaks.values(), 0.0)

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.peaks.items()}

    def _note(self, name: str, mb: float) -> None:
        with self._lock:
            self.peaks[name] = max(self.peaks.get(name, 0.0), mb)

    def _sample(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            mb = rss_mb()
            with self._lock:
                for name in self._open:
                    self.peaks[name] = max(self.peaks.get(name, 0.0), mb)

    def _start(self) -> None:
        if self._stop is None:
            self._stop = threading.Event()
            threading.Thread(target=self._sample, args=(self._stop,), daemon=True, name="retune-memory").start()

    def _halt(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
