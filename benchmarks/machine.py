"""Shared by the benchmarks: how much of the CPU the measurement actually had.

On a virtual machine the hypervisor can hand the host's cores to other machines: Linux counts that time as "steal" in
``/proc/stat``. With much steal, timings are slower and noisier, and the implementation made of many small operations
(ours) loses more than the one made of a few large ones, so the benchmarks print it next to their tables.
"""

from __future__ import annotations


def _cpu_times() -> list[int] | None:
    """The machine's cumulative CPU times (user, nice, system, idle, iowait, irq, softirq, steal, ...) in ticks."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    return [int(value) for value in fields[1:]] if fields and fields[0] == "cpu" else None


class CpuSteal:
    """Counts the CPU time stolen by the hypervisor from its creation to :meth:`report`."""

    def __init__(self) -> None:
        self.start = _cpu_times()

    def share(self) -> float | None:
        """Stolen share of all CPU time since the start (0-1), or None where the system does not count it."""
        end = _cpu_times()
        if self.start is None or end is None or len(end) < 8:
            return None
        spent = [after - before for before, after in zip(self.start, end)]
        total = sum(spent[:8])  # guest times are already inside user and nice
        return spent[7] / total if total else None

    def report(self) -> str:
        share = self.share()
        if share is None:
            return "CPU steal: not counted on this system"
        note = " (other virtual machines had the host's cores: expect slower, noisier timings)" if share > 0.05 else ""
        return f"CPU steal during the measurement: {100 * share:.0f}%{note}"
