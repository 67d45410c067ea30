"""The systemd notification protocol (sd_notify): readiness, reload, stop,
status text and watchdog pings, sent as datagrams to ``$NOTIFY_SOCKET``.

Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing, so the daemon
runs the same under a terminal, a container or a test.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class SystemdNotifier:
    """Speaks to the service manager that started this process, if any.

    Sending never raises: a lost notification must not take the daemon down.
    The first failure is logged; the next is logged only after a success.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = (
            _watchdog_interval_s(env) if self._address is not None else None
        )
        """Half the watchdog timeout systemd enforces, or None without one:
        how often the daemon should call `watchdog()`."""
        self._socket: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self) -> None:
        self._send("READY=1")

    def reloading(self) -> None:
        """Before a configuration reload; call `ready()` when it is done."""
        # MONOTONIC_USEC lets systemd 253+ match this message to the reload
        # it asked for; older versions ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        """One line shown by ``systemctl status``."""
        self._send("STATUS=" + " ".join(text.split()))

    def watchdog(self) -> None:
        """Tell systemd the main loop is alive; a no-op without a watchdog."""
        if self.watchdog_interval_s is not None:
            self._send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                # A full receive queue must not stall the event loop.
                self._socket.setblocking(False)
            self._socket.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "sd_notify_failed",
                    socket=_shown(self._address),
                    message=message.split("=", 1)[0],
                    error=exc.strerror or type(exc).__name__,
                )
            self.close()
            return
        if self._failing:
            self._failing = False
            log.info("sd_notify_recovered", socket=_shown(self._address))


def _socket_address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        # Linux abstract namespace: the name starts with a NUL byte.
        return "\0" + value[1:]
    return value


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    # The variables are inherited by children; only the process systemd
    # watches may ping, or a child would keep a hung parent alive.
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    return usec / 1_000_000 / 2


def _shown(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address
