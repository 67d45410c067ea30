"""sd_notify against real unix datagram sockets, as systemd would listen."""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.sdnotify import SystemdNotifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def _receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_sdnotify_sends_ready_status_stopping(
    listener: tuple[socket.socket, str],
) -> None:
    """Each call is one datagram with the protocol's KEY=value text."""
    sock, path = listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    try:
        notifier.ready()
        notifier.status("7 checks,\n 1 failing")
        notifier.stopping()
    finally:
        notifier.close()
    assert _receive(sock) == "READY=1"
    assert _receive(sock) == "STATUS=7 checks, 1 failing"
    assert _receive(sock) == "STOPPING=1"


def test_sdnotify_reloading_carries_monotonic_usec(
    listener: tuple[socket.socket, str],
) -> None:
    """RELOADING=1 comes with the monotonic time systemd 253+ matches it by."""
    sock, path = listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    notifier.reloading()
    notifier.close()
    first, second = _receive(sock).split("\n")
    assert first == "RELOADING=1"
    assert second.startswith("MONOTONIC_USEC=")
    assert int(second.split("=")[1]) > 0


def test_sdnotify_abstract_socket(tmp_path: Path) -> None:
    """A NOTIFY_SOCKET starting with @ names the abstract namespace."""
    name = f"sentinel-test-{os.getpid()}-{tmp_path.name}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
    try:
        notifier.ready()
        assert _receive(sock) == "READY=1"
    finally:
        notifier.close()
        sock.close()


def test_sdnotify_watchdog_interval_is_half_the_timeout(
    listener: tuple[socket.socket, str],
) -> None:
    """WATCHDOG_USEC=30 s means a ping every 15 s, and pings are sent."""
    sock, path = listener
    env = {
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    notifier = SystemdNotifier(env)
    assert notifier.watchdog_interval_s == 15.0
    notifier.watchdog()
    notifier.close()
    assert _receive(sock) == "WATCHDOG=1"


def test_sdnotify_watchdog_for_another_pid_is_ignored(
    listener: tuple[socket.socket, str],
) -> None:
    """A watchdog meant for another process (WATCHDOG_PID) is not ours to ping."""
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    notifier = SystemdNotifier(env)
    assert notifier.watchdog_interval_s is None
    notifier.watchdog()
    notifier.ready()
    notifier.close()
    # The first datagram is READY: no WATCHDOG=1 was sent before it.
    assert _receive(sock) == "READY=1"


def test_sdnotify_without_socket_does_nothing() -> None:
    """Outside systemd every call is a silent no-op."""
    notifier = SystemdNotifier({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    notifier.ready()
    notifier.watchdog()
    notifier.stopping()
    notifier.close()


def test_sdnotify_send_failure_never_raises_and_logs_once(
    tmp_path: Path, log_output: io.StringIO
) -> None:
    """A vanished socket is logged once, not on every ping, and never raises."""
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    for _ in range(3):
        notifier.ready()
        notifier.status("still here")
    notifier.close()
    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["sd_notify_failed"]
    assert str(lines[0]["socket"]).endswith("gone.sock")
    assert lines[0]["message"] == "READY"


def test_sdnotify_logs_recovery_after_a_failure(
    tmp_path: Path, log_output: io.StringIO
) -> None:
    """Once the socket is back, the next send succeeds and says so once."""
    path = tmp_path / "later.sock"
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    notifier.ready()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        notifier.status("back")
        notifier.status("again")
        assert _receive(sock) == "STATUS=back"
    finally:
        notifier.close()
        sock.close()
    events = [json.loads(line)["event"] for line in log_output.getvalue().splitlines()]
    assert events == ["sd_notify_failed", "sd_notify_recovered"]
