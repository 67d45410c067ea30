"""Host resources: disk space and inodes per mount, memory, swap, CPU, load."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any, Self

import psutil  # type: ignore[import-untyped]

from checks.base import Check, CheckSpec, Limits, read_limits
from checks.result import Outcome, Status
from checks.settings import Section

# Read-only image filesystems are full by design (snaps, ISOs): watching
# them by default would page about nothing.
_ALWAYS_FULL_FSTYPES = frozenset({"squashfs", "iso9660", "udf", "erofs", "cramfs"})

# name: (default warning, default critical, upper bound, unit shown)
_THRESHOLDS: dict[str, tuple[float, float, float | None, str]] = {
    "disk": (85.0, 95.0, 100.0, "%"),
    "inodes": (85.0, 95.0, 100.0, "%"),
    "memory": (90.0, 95.0, 100.0, "%"),
    "swap": (50.0, 80.0, 100.0, "%"),
    "cpu": (90.0, 98.0, 100.0, "%"),
    "load": (2.0, 4.0, None, "/core"),
}


@dataclass(frozen=True, slots=True)
class SystemSettings:
    mounts: tuple[str, ...] | None
    """None: every real local filesystem, looked up at each probe."""
    thresholds: dict[str, Limits]

    @classmethod
    def read(cls, section: Section) -> SystemSettings:
        mounts = section.str_list("mounts", None)
        if isinstance(mounts, list):
            if not mounts:
                section.error("mounts", "must list at least one mount point")
            for mount in mounts:
                if not mount.startswith("/"):
                    section.error("mounts", f'"{mount}" is not an absolute path')
        thresholds = {
            name: read_limits(section, name, (warning, critical), maximum=upper)
            for name, (warning, critical, upper, _) in _THRESHOLDS.items()
        }
        return cls(
            mounts=tuple(dict.fromkeys(mounts)) if isinstance(mounts, list) else None,
            thresholds=thresholds,
        )


@dataclass
class _FilesystemSample:
    disk_percent: dict[str, float] = field(default_factory=dict)
    inode_percent: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    current: str = "the mount table"
    """The mount being read right now, to name it if statvfs hangs."""


class SystemCheck(Check):
    """This host's resources, against percent (and load-per-core) thresholds.

    Values:
        ``disk_used_percent`` (the fullest mount) and
        ``disk_used_percent:<mount>`` for each mount, counting the blocks
        reserved for root as unavailable, as ``df`` does;
        ``inodes_used_percent`` and ``inodes_used_percent:<mount>`` (mounts
        whose filesystem has no inode limit are left out);
        ``memory_used_percent`` (not available to new processes),
        ``swap_used_percent``;
        ``cpu_percent``: busy share of all CPUs since this check's previous
        probe (absent when no clock tick has passed since then);
        ``load1_per_core``: the one-minute load average over logical CPUs.

    Filesystems are read in a worker thread: a hung network mount blocks
    that thread, not the daemon, and the next probes report it as critical
    instead of piling up more blocked threads.
    """

    type_name = "system"
    default_interval_s = 30.0
    default_timeout_s = 5.0

    def __init__(self, spec: CheckSpec, settings: SystemSettings) -> None:
        super().__init__(spec)
        self.settings = settings
        # A baseline of our own: psutil.cpu_percent(interval=None) keeps one
        # per process, so every other caller would shorten our window.
        self._cpu_last = psutil.cpu_times()
        self._cpu_count = psutil.cpu_count() or 1
        self._fs_task: asyncio.Future[_FilesystemSample] | None = None
        self._fs_sample: _FilesystemSample | None = None
        self._fs_started = 0.0

    @classmethod
    def configure(cls, spec: CheckSpec, section: Section) -> Self:
        return cls(spec, SystemSettings.read(section))

    async def probe(self) -> Outcome:
        if self._fs_task is not None and not self._fs_task.done():
            assert self._fs_sample is not None
            stuck_s = time.monotonic() - self._fs_started
            return Outcome(
                Status.CRITICAL,
                f"reading filesystem {self._fs_sample.current} has not returned for "
                f"{stuck_s:.0f} s (a hung network mount?)",
            )
        sample = _FilesystemSample()
        self._fs_sample = sample
        self._fs_started = time.monotonic()
        self._fs_task = asyncio.ensure_future(
            asyncio.to_thread(_read_filesystems, self.settings.mounts, sample)
        )
        self._fs_task.add_done_callback(_consume_result)
        await asyncio.shield(self._fs_task)

        values: dict[str, float] = {}
        readings: list[tuple[str, str, float]] = []  # (threshold, label, value)
        for mount, percent in sample.disk_percent.items():
            values[f"disk_used_percent:{mount}"] = percent
            readings.append(("disk", f"disk {mount}", percent))
        for mount, percent in sample.inode_percent.items():
            values[f"inodes_used_percent:{mount}"] = percent
            readings.append(("inodes", f"inodes {mount}", percent))
        if sample.disk_percent:
            values["disk_used_percent"] = max(sample.disk_percent.values())
        if sample.inode_percent:
            values["inodes_used_percent"] = max(sample.inode_percent.values())

        memory = psutil.virtual_memory().percent
        swap = psutil.swap_memory().percent
        load = os.getloadavg()[0] / self._cpu_count
        values["memory_used_percent"] = memory
        values["swap_used_percent"] = swap
        values["load1_per_core"] = load
        readings += [("memory", "memory", memory), ("swap", "swap", swap)]
        cpu = self._cpu_percent()
        if cpu is not None:
            values["cpu_percent"] = cpu
            readings.append(("cpu", "cpu", cpu))
        readings.append(("load", "load", load))
        return self._judge(readings, values, sample.missing)

    def _judge(
        self,
        readings: list[tuple[str, str, float]],
        values: dict[str, float],
        missing: list[str],
    ) -> Outcome:
        status = Status.UNKNOWN if missing else Status.OK
        problems: list[tuple[Status, str]] = []
        for name, label, value in readings:
            limits = self.settings.thresholds[name]
            level = limits.status(value)
            if level is not Status.OK:
                status = status.worst(level)
                limit = limits.reached(level)
                unit = _THRESHOLDS[name][3]
                problems.append(
                    (
                        level,
                        f"{label} {_show(value, unit)} ({level.label} at "
                        f"{_show(limit, unit)})",
                    )
                )
        problems.sort(key=lambda p: p[0] is not Status.CRITICAL)
        parts = [text for _, text in problems] + missing
        if not parts:
            parts = [_summary(values)]
        return Outcome(status, "; ".join(parts), values)

    def _cpu_percent(self) -> float | None:
        now = psutil.cpu_times()
        last, self._cpu_last = self._cpu_last, now
        total = _cpu_total(now) - _cpu_total(last)
        if total <= 0:
            return None
        busy = total - (_cpu_idle(now) - _cpu_idle(last))
        return min(100.0, max(0.0, busy / total * 100.0))

    async def close(self) -> None:
        if self._fs_task is not None and not self._fs_task.done():
            # The thread itself cannot be stopped; it ends when statvfs does.
            self._fs_task.cancel()


def _consume_result(task: asyncio.Future[_FilesystemSample]) -> None:
    """A sample whose probe timed out is dropped; retrieving its outcome
    keeps asyncio from reporting it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _read_filesystems(
    mounts: tuple[str, ...] | None, sample: _FilesystemSample
) -> _FilesystemSample:
    if mounts is None:
        partitions = psutil.disk_partitions(all=False)
        mounts = tuple(
            dict.fromkeys(
                p.mountpoint for p in partitions if p.fstype not in _ALWAYS_FULL_FSTYPES
            )
        )
        mounted = set(mounts)
    else:
        mounted = {p.mountpoint for p in psutil.disk_partitions(all=True)}
    for mount in mounts:
        if mount not in mounted:
            # An unmounted volume's directory would report the root
            # filesystem's usage: say so rather than measure the wrong disk.
            reason = "is not mounted" if os.path.isdir(mount) else "does not exist"
            sample.missing.append(f"mount {mount} {reason}")
            continue
        sample.current = mount
        try:
            st = os.statvfs(mount)
        except OSError as exc:
            sample.missing.append(f"mount {mount} cannot be read: {exc.strerror}")
            continue
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        usable = used + st.f_bavail * st.f_frsize
        sample.disk_percent[mount] = used / usable * 100.0 if usable else 0.0
        if st.f_files:
            sample.inode_percent[mount] = (st.f_files - st.f_ffree) / st.f_files * 100.0
    return sample


def _cpu_total(times: Any) -> float:
    # On Linux guest time is also counted in user and nice.
    guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return float(sum(times)) - guest


def _cpu_idle(times: Any) -> float:
    return float(times.idle + getattr(times, "iowait", 0.0))


def _show(value: float, unit: str) -> str:
    return f"{value:.1f}%" if unit == "%" else f"{value:.2f}{unit}"


def _summary(values: dict[str, float]) -> str:
    parts = []
    if "disk_used_percent" in values:
        parts.append(f"disk {values['disk_used_percent']:.0f}%")
    if "inodes_used_percent" in values:
        parts.append(f"inodes {values['inodes_used_percent']:.0f}%")
    parts.append(f"memory {values['memory_used_percent']:.0f}%")
    parts.append(f"swap {values['swap_used_percent']:.0f}%")
    if "cpu_percent" in values:
        parts.append(f"cpu {values['cpu_percent']:.0f}%")
    parts.append(f"load {values['load1_per_core']:.2f}/core")
    return ", ".join(parts)
