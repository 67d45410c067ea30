"""A real moto server (SNS, SES, CloudWatch, ...) on a free loopback port.

tests/conftest.py registers this module as a plugin, so any test can ask
for the ``moto`` or ``moto_server`` fixture.

`moto_server` starts one ``moto_server`` process for the whole session;
`moto` hands it to one test after clearing every backend, so tests never see
each other's topics, messages or alarms.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pytest

from tests.daemon_harness import free_port

AWS_ENV = {
    # botocore must never look beyond loopback for credentials or config.
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
DUMMY_ACCESS_KEY_ID = "testing"
DUMMY_SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"
_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str

    def reset(self) -> None:
        """Clear every backend."""
        self._request("/moto-api/reset", method="POST")

    def model_data(self) -> dict[str, Any]:
        """moto's own view of its backends (``/moto-api/data.json``)."""
        data: dict[str, Any] = json.loads(self._request("/moto-api/data.json"))
        return data

    def sent_sms(self) -> list[tuple[str, str]]:
        """(phone number, message) of every SMS published since the reset."""
        sms = self.model_data().get("sns", {}).get("SMS", [])
        return [(item["phone_number"], item["message"]) for item in sms]

    def _request(self, path: str, method: str = "GET") -> bytes:
        request = urllib.request.Request(self.endpoint_url + path, method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            body: bytes = response.read()
            return body


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session; its process is stopped at the end."""
    port = free_port()
    env = {**AWS_ENV, "PATH": "/usr/bin:/bin"}
    # A file, not a pipe: werkzeug logs every request to stderr, and a pipe
    # nobody reads would fill up and freeze the server mid-test.
    with tempfile.TemporaryFile() as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        server = MotoServer(f"http://127.0.0.1:{port}")
        try:
            _wait_until_up(server, process, log_file)
            with pytest.MonkeyPatch.context() as patch:
                for name, value in AWS_ENV.items():
                    patch.setenv(name, value)
                yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The session's moto server, cleared for this test."""
    moto_server.reset()
    return moto_server


def _wait_until_up(
    server: MotoServer, process: subprocess.Popen[bytes], log_file: IO[bytes]
) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            log_file.seek(0)
            output = log_file.read().decode(errors="replace")
            raise RuntimeError(
                f"moto_server exited with {process.returncode}: {output[-2000:]}"
            )
        try:
            server.model_data()
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"moto_server did not answer on {server.endpoint_url} "
                    f"within {_START_TIMEOUT_S:g} s"
                ) from None
            time.sleep(0.05)
        else:
            return
