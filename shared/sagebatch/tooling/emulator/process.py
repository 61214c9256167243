"""The endpoint emulator in a process of its own.

`sagebatch run` plays every function in one Python process; an emulator serving from a thread of that process
shares its GIL with the workers and with moto, and ten thousand instant answers cost the pipeline a core's worth of
Python. In its own process the emulator has the second core. `EmulatorProcess` is what `EmulatorServer` is to the
local stack (`url`, `start`, `stop`, `emulator.stats`), with the counters read over HTTP (GET /stats). What a test
inspects in-process (`Emulator.seen_inputs`, fault bursts that swap `faults` while it runs) needs the in-process
`EmulatorServer`, which stays the default of `local_stack`.

The child takes its configuration on the command line (a pickle of this package's own dataclasses: parent and
child are the same code), prints its URL on one line, and serves until its stdin closes: when the parent stops
it, or dies.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from sagebatch.tooling.emulator.server import STATS_PATH, EmulatorConfig, EmulatorServer, EmulatorStats

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through an HTTP proxy


class EmulatorProcessFailed(RuntimeError):
    """The emulator process did not come up."""


class RemoteEmulator:
    """The part of `Emulator` the local stack reads, for an emulator in another process."""

    def __init__(self, url: str, endpoint_name: str):
        self.url = url
        self.endpoint_name = endpoint_name

    @property
    def stats(self) -> EmulatorStats:
        with _OPENER.open(self.url + STATS_PATH, timeout=5) as response:
            return EmulatorStats(**json.loads(response.read()))


class EmulatorProcess:
    """Serve `config.build(endpoint_name)` from a child process on loopback."""

    def __init__(self, config: EmulatorConfig, endpoint_name: str, host: str = "127.0.0.1", port: int = 0):
        self.config = config
        self.endpoint_name = endpoint_name
        self._arguments = (config, endpoint_name, host, port)
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the emulator process is not started")
        return self._url

    @property
    def emulator(self) -> RemoteEmulator:
        return RemoteEmulator(self.url, self.endpoint_name)

    def start(self) -> EmulatorProcess:
        payload = base64.b64encode(pickle.dumps(self._arguments)).decode()
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, payload], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_environment()
        )
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], STARTUP_TIMEOUT_S)
        line = self._process.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http://"):
            self.stop()
            raise EmulatorProcessFailed(f"the emulator process did not report its URL within {STARTUP_TIMEOUT_S:g} s")
        self._url = line
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()  # the child serves until its stdin closes
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _child_environment() -> dict[str, str]:
    """The parent's environment, with this package importable however the parent found it (installed, PYTHONPATH)."""
    package_root = str(Path(__file__).resolve().parents[3])
    paths = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return os.environ | {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def serve(payload: str) -> None:
    """The child: serve until stdin closes. Ctrl-C on the terminal reaches the whole process group; the parent
    decides when the emulator stops, so the child ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config, endpoint_name, host, port = pickle.loads(base64.b64decode(payload))
    server = EmulatorServer(config.build(endpoint_name), host=host, port=port).start()
    sys.stdout.write(server.url + "\n")
    sys.stdout.flush()
    sys.stdin.buffer.read()
    server.stop()


if __name__ == "__main__":
    serve(sys.argv[1])
