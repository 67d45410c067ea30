"""Idle memory: the daemon on the bundled config.toml (its own state folder
and port), left alone for a while, then its resident set size. For scale,
the RSS of a bare interpreter that imports every library Sentinel can use.

    python bench/idle_rss.py [--settle 15]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, daemon_process, free_port, machine, wait_http

ALL_LIBRARIES = (
    "import aiohttp, aiomysql, redis.asyncio, aiomqtt, aiobotocore.session, "
    "aiosmtplib, structlog, prometheus_client, psutil, uvloop"
)


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def libraries_rss_mib() -> float:
    status = "open('/proc/self/status').read()"
    pattern = "r'VmRSS:\\s+(\\d+)'"
    code = f"{ALL_LIBRARIES}; import re; print(re.search({pattern}, {status})[1])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=15.0)
    args = parser.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        text = (ROOT / "config.toml").read_text()
        text = text.replace('state_dir = ".state"', f'state_dir = "{tmp}/state"')
        text = text.replace("8765", str(port))
        config = Path(tmp) / "config.toml"
        config.write_text(text)
        with daemon_process(config, Path(tmp) / "daemon.log") as proc:
            wait_http(f"http://127.0.0.1:{port}/healthz")
            time.sleep(args.settle)
            idle = rss_mib(proc.pid)
    print(f"machine: {machine()}")
    print(
        f"idle RSS of the daemon on config.toml after {args.settle:g} s: {idle:.1f} MiB"
    )
    print(
        f"RSS of an interpreter importing every library: {libraries_rss_mib():.1f} MiB"
    )


if __name__ == "__main__":
    main()
