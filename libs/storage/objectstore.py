"""Object storage behind one small synchronous interface.

Two backends:

* :class:`LocalStore` -- a directory; writes are atomic (temp file in the same directory,
  fsync, ``os.replace``), so a reader never sees a partial object.
* :class:`S3Store` -- any S3 endpoint (SeaweedFS in tests, MinIO or AWS S3 in a cluster)
  through the ``minio`` SDK. A single PUT is atomic in S3.

Callers in async code wrap these calls with ``asyncio.to_thread``. Pick a backend from a URL
with :func:`open_store`::

    open_store("/data/out")                 # LocalStore
    open_store("file:///data/out")          # LocalStore
    open_store("s3://bucket/some/prefix")   # S3Store, endpoint and keys from the environment

Keys are ``/``-separated relative paths (``runs/r1/shards/w0-000000.parquet``). Errors are
:class:`StoreError` (or :class:`ObjectNotFound`); messages name the store, key and endpoint but
never credentials.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from libs.errors import NotFound, ScaleQuestError

__all__ = [
    "DEFAULT_S3_ENDPOINT",
    "LocalStore",
    "ObjectNotFound",
    "ObjectStore",
    "S3Store",
    "StoreError",
    "open_store",
    "validate_key",
]

DEFAULT_S3_ENDPOINT = "http://127.0.0.1:9000"
_COPY_CHUNK = 1024 * 1024


class StoreError(ScaleQuestError):
    """Object storage failed (unreachable endpoint, bad key, permission, bad URL...)."""


class ObjectNotFound(StoreError, NotFound):
    """The requested key does not exist in the store."""


# --------------------------------------------------------------------------------------------
# keys


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise :class:`StoreError`.

    Valid: a non-empty ``/``-separated relative path with no empty, ``.`` or ``..`` segments,
    no leading ``/``, no backslashes or NUL characters.
    """
    if not isinstance(key, str):
        raise StoreError(f"object key must be a str, got {type(key).__name__}")
    if not key:
        raise StoreError("object key must not be empty")
    if key.startswith("/"):
        raise StoreError(f"object key must be relative (no leading '/'): {key!r}")
    if "\\" in key or "\x00" in key:
        raise StoreError(f"object key must not contain backslashes or NUL: {key!r}")
    for part in key.split("/"):
        if part == "..":
            raise StoreError(f"object key must not contain '..': {key!r}")
        if part in ("", "."):
            raise StoreError(f"object key has an empty or '.' path segment: {key!r}")
    return key


def _validate_prefix(prefix: str) -> str:
    """A listing prefix: '' or a key-like string that may end with '/'."""
    if not isinstance(prefix, str):
        raise StoreError(f"list prefix must be a str, got {type(prefix).__name__}")
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") and len(prefix) > 1 else prefix)
    return prefix


# --------------------------------------------------------------------------------------------
# interface


class ObjectStore(ABC):
    """Minimal blob store. All methods are synchronous and thread-safe."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The URL the store was opened with (never with credentials)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key`` atomically (readers see the old object or the new one)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Return the object's content; :class:`ObjectNotFound` if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with ``prefix`` (plain string prefix, recursive)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; no error if it does not exist."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Upload a local file (atomic like :meth:`put_bytes`)."""

    @abstractmethod
    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Download to a local file; the file appears atomically (temp file + rename)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Full address of ``key``: ``s3://bucket/prefix/key`` or an absolute local path."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


_TMP_SUFFIX = ".sqtmp"


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


def _atomic_write_stream(dest: Path, chunks: Iterator[bytes]) -> None:
    """Write ``chunks`` to ``dest`` via a temp file in the same directory, fsync, rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; objects are meant to be shared
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(dest.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_chunks(f: io.BufferedIOBase | io.RawIOBase) -> Iterator[bytes]:
    while True:
        chunk = f.read(_COPY_CHUNK)
        if not chunk:
            return
        yield chunk


# --------------------------------------------------------------------------------------------
# local directory

class LocalStore(ObjectStore):
    """Objects are files under ``root``; writes are atomic and durable (fsync)."""

    def __init__(self, root: str | os.PathLike[str], *, url: str | None = None) -> None:
        self._root = Path(root).expanduser().resolve()
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create local store directory {self._root}: {e.strerror or e}") from e
        if not self._root.is_dir():
            raise StoreError(f"local store root is not a directory: {self._root}")
        self._url = url or str(self._root)

    @property
    def url(self) -> str:
        return self._url

    @property
    def root(self) -> Path:
        return self._root

    def _path(self, key: str) -> Path:
        validate_key(key)
        if _is_temp_name(key.rsplit("/", 1)[-1]):
            raise StoreError(f"object key uses the reserved temp-file pattern: {key!r}")
        return self._root.joinpath(*key.split("/"))

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        view = memoryview(data)
        try:
            _atomic_write_stream(path, iter((view,)))
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from e

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        dest = self._path(key)
        try:
            with open(path, "rb") as src:
                _atomic_write_stream(dest, _read_chunks(src))
        except FileNotFoundError as e:
            raise StoreError(f"cannot upload {os.fspath(path)} to {dest}: source file not found") from e
        except OSError as e:
            raise StoreError(f"cannot upload {os.fspath(path)} to {dest}: {e.strerror or e}") from e

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise ObjectNotFound(f"object not found: {path}") from e
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror or e}") from e

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        src_path = self._path(key)
        try:
            src = open(src_path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise ObjectNotFound(f"object not found: {src_path}") from e
        except OSError as e:
            raise StoreError(f"cannot read {src_path}: {e.strerror or e}") from e
        try:
            with src:
                _atomic_write_stream(Path(path), _read_chunks(src))
        except OSError as e:
            raise StoreError(f"cannot download {src_path} to {os.fspath(path)}: {e.strerror or e}") from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        # Walk only the deepest directory the prefix names completely.
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._root.joinpath(*base_rel.split("/")) if base_rel else self._root
        if not base.is_dir():
            return []
        out: list[str] = []
        try:
            for dirpath, dirnames, filenames in os.walk(base, onerror=None):
                rel_dir = os.path.relpath(dirpath, self._root)
                rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
                # prune directories that cannot contain matches
                dirnames[:] = [
                    d for d in dirnames
                    if (rel_dir + d + "/").startswith(prefix) or prefix.startswith(rel_dir + d + "/")
                ]
                for name in filenames:
                    if _is_temp_name(name):
                        continue
                    key = rel_dir + name
                    if key.startswith(prefix):
                        out.append(key)
        except OSError as e:
            raise StoreError(f"cannot list {base}: {e.strerror or e}") from e
        out.sort()
        return out

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError as e:
            raise StoreError(f"cannot delete {path}: it is a directory, not an object") from e
        except OSError as e:
            raise StoreError(f"cannot delete {path}: {e.strerror or e}") from e


# --------------------------------------------------------------------------------------------
# S3 (minio SDK)

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound", "NotFound"}
_BUCKET_EXISTS_CODES = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}


def _parse_endpoint(endpoint: str, secure: bool | None) -> tuple[str, bool, str]:
    """Return (host[:port], secure, display_url) for an endpoint given with or without scheme."""
    ep = endpoint.strip()
    if not ep:
        raise StoreError("S3 endpoint is empty")
    if "://" in ep:
        parts = urlsplit(ep)
        if parts.scheme not in ("http", "https"):
            raise StoreError(f"S3 endpoint must be http:// or https://, got scheme {parts.scheme!r}")
        if parts.username or parts.password:
            raise StoreError("S3 endpoint must not contain credentials; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        if parts.path not in ("", "/") or parts.query:
            raise StoreError(f"S3 endpoint must be scheme://host[:port] without a path, got {ep!r}")
        if not parts.hostname:
            raise StoreError(f"S3 endpoint has no host: {ep!r}")
        scheme_secure = parts.scheme == "https"
        if secure is not None and secure != scheme_secure:
            raise StoreError(f"S3 endpoint {ep!r} conflicts with secure={secure}")
        return parts.netloc, scheme_secure, f"{parts.scheme}://{parts.netloc}"
    if "/" in ep or "@" in ep:
        raise StoreError(f"S3 endpoint must be host[:port] or scheme://host[:port], got {ep!r}")
    sec = bool(secure)
    return ep, sec, f"{'https' if sec else 'http'}://{ep}"


class S3Store(ObjectStore):
    """Objects live in ``bucket`` under ``prefix``; the bucket is created on first use if missing.

    ``endpoint`` is ``host:port`` (``secure`` picks https) or ``http(s)://host:port``.
    Timeouts are bounded so an outage surfaces as :class:`StoreError` within seconds rather
    than the SDK's default of minutes.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        secure: bool | None = None,
        region: str | None = None,
        *,
        session_token: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        retries: int = 3,
        url: str | None = None,
    ) -> None:
        import urllib3
        from minio import Minio

        if not bucket or not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
            raise StoreError(
                f"invalid S3 bucket name {bucket!r}: 3-63 chars of lowercase letters, digits, '.' and '-'"
            )
        prefix = (prefix or "").strip("/")
        if prefix:
            validate_key(prefix)
        self._bucket = bucket
        self._prefix = prefix
        host, sec, display = _parse_endpoint(endpoint, secure)
        self._endpoint = display
        # Never in a message: the keys (the access key id too: it names the account) and the token.
        self._secrets = tuple(s for s in (secret_key, session_token, access_key) if s and len(s) >= 4)
        self._url = url or (f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}")
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=16,
            retries=urllib3.Retry(
                total=retries,
                backoff_factor=0.2,
                status_forcelist=[500, 502, 503, 504],
            ),
        )
        try:
            self._client = Minio(
                host,
                access_key=access_key or None,
                secret_key=secret_key or None,
                session_token=session_token or None,
                secure=sec,
                region=region or None,
                http_client=http,
            )
        except (ValueError, TypeError) as e:
            raise StoreError(f"invalid S3 configuration for endpoint {display}: {self._scrub(str(e))}") from e
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._url

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _name(self, key: str) -> str:
        validate_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self._bucket}/{self._name(key)}"

    def _fail(self, op: str, what: str, e: BaseException) -> StoreError:
        """Translate an SDK/transport exception into StoreError (or ObjectNotFound)."""
        from minio.error import S3Error

        if isinstance(e, S3Error):
            if op == "get" and e.code in _NOT_FOUND_CODES:
                return ObjectNotFound(f"object not found: {what}")
            msg = f"S3 {op} of {what} failed at {self._endpoint}: {e.code}: {e.message}"
        else:
            reason = getattr(e, "reason", None)  # urllib3 MaxRetryError wraps the real cause
            cause = reason if isinstance(reason, BaseException) else e
            msg = f"S3 endpoint {self._endpoint} failed during {op} of {what}: {type(cause).__name__}: {cause}"
        return StoreError(self._scrub(msg))

    def _write(self, fn) -> None:
        """Run a write; if the bucket vanished since it was checked, recreate it and retry once."""
        from minio.error import S3Error

        self._ensure_bucket()
        try:
            fn()
        except S3Error as e:
            if e.code != "NoSuchBucket":
                raise
            self._bucket_ready = False
            self._ensure_bucket()
            fn()

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from minio.error import S3Error

        with self._bucket_lock:
            if self._bucket_ready:
                return
            what = f"s3://{self._bucket}"
            try:
                if not self._client.bucket_exists(bucket_name=self._bucket):
                    try:
                        self._client.make_bucket(bucket_name=self._bucket)
                    except S3Error as e:
                        if e.code not in _BUCKET_EXISTS_CODES:  # lost a creation race: fine
                            raise
            except Exception as e:
                raise self._fail("bucket setup", what, e) from e
            self._bucket_ready = True

    # -- operations -----------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        name = self._name(key)
        try:
            self._write(
                lambda: self._client.put_object(
                    bucket_name=self._bucket,
                    object_name=name,
                    data=io.BytesIO(data),
                    length=len(data),
                    content_type=content_type,
                )
            )
        except StoreError:
            raise
        except Exception as e:
            raise self._fail("put", self.uri(key), e) from e

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        name = self._name(key)
        if not os.path.isfile(path):
            raise StoreError(f"cannot upload {os.fspath(path)} to {self.uri(key)}: source file not found")
        try:
            self._write(
                lambda: self._client.fput_object(
                    bucket_name=self._bucket,
                    object_name=name,
                    file_path=os.fspath(path),
                )
            )
        except StoreError:
            raise
        except Exception as e:
            raise self._fail("put", self.uri(key), e) from e

    def get_bytes(self, key: str) -> bytes:
        name = self._name(key)
        resp = None
        try:
            resp = self._client.get_object(bucket_name=self._bucket, object_name=name)
            return resp.read()
        except Exception as e:
            raise self._fail("get", self.uri(key), e) from e
        finally:
            if resp is not None:
                resp.close()
                resp.release_conn()

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        name = self._name(key)
        resp = None
        try:
            resp = self._client.get_object(bucket_name=self._bucket, object_name=name)
            _atomic_write_stream(Path(path), resp.stream(_COPY_CHUNK))
        except OSError as e:
            if not _is_transport_error(e):
                raise StoreError(f"cannot write {os.fspath(path)}: {e.strerror or e}") from e
            raise self._fail("get", self.uri(key), e) from e
        except Exception as e:
            raise self._fail("get", self.uri(key), e) from e
        finally:
            if resp is not None:
                resp.close()
                resp.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        name = self._name(key)
        try:
            self._client.stat_object(bucket_name=self._bucket, object_name=name)
            return True
        except S3Error as e:
            if e.code in _NOT_FOUND_CODES or getattr(e.response, "status", None) == 404:
                return False
            raise self._fail("stat", self.uri(key), e) from e
        except Exception as e:
            raise self._fail("stat", self.uri(key), e) from e

    def list(self, prefix: str = "") -> list[str]:
        from minio.error import S3Error

        _validate_prefix(prefix)
        full = f"{self._prefix}/{prefix}" if self._prefix else prefix
        strip = len(self._prefix) + 1 if self._prefix else 0
        try:
            keys = [
                obj.object_name[strip:]
                for obj in self._client.list_objects(
                    bucket_name=self._bucket, prefix=full or None, recursive=True
                )
                if obj.object_name and not obj.is_dir
            ]
        except S3Error as e:
            if e.code == "NoSuchBucket":
                return []
            raise self._fail("list", f"s3://{self._bucket}/{full}", e) from e
        except Exception as e:
            raise self._fail("list", f"s3://{self._bucket}/{full}", e) from e
        keys.sort()
        return keys

    def delete(self, key: str) -> None:
        from minio.error import S3Error

        name = self._name(key)
        try:
            self._client.remove_object(bucket_name=self._bucket, object_name=name)
        except S3Error as e:
            if e.code in _NOT_FOUND_CODES:
                return
            raise self._fail("delete", self.uri(key), e) from e
        except Exception as e:
            raise self._fail("delete", self.uri(key), e) from e


def _is_transport_error(e: BaseException) -> bool:
    mod = type(e).__module__ or ""
    return mod.startswith("urllib3") or isinstance(e, (ConnectionError, TimeoutError))


# --------------------------------------------------------------------------------------------
# URL -> store


def _redact_url(url: str) -> str:
    """Drop any user:password@ part so a URL can go into an error message."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return parts._replace(netloc=f"***@{host}").geturl()


def _env(*names: str) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


def open_store(url: str) -> ObjectStore:
    """Open a store from a URL.

    * ``/path``, ``relative/path``, ``file:///abs/path`` -> :class:`LocalStore`
    * ``s3://bucket[/prefix]`` -> :class:`S3Store` configured from the environment:

      - ``SQ_S3_ENDPOINT`` (default ``http://127.0.0.1:9000``; ``https://`` means TLS; a bare
        ``host:port`` uses ``SQ_S3_SECURE=true|false``, default false)
      - ``SQ_S3_ACCESS_KEY`` / ``SQ_S3_SECRET_KEY``, falling back to ``AWS_ACCESS_KEY_ID`` /
        ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``); none at all means anonymous
      - ``SQ_S3_REGION`` (optional, falls back to ``AWS_REGION``)
    """
    if not isinstance(url, str) or not url.strip():
        raise StoreError("store URL is empty")
    url = url.strip()
    if "://" not in url:
        return LocalStore(url, url=url)
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise StoreError(f"cannot parse store URL {_redact_url(url)!r}: {e}") from e
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"file:// store URL must be local (file:///path), got {_redact_url(url)!r}")
        path = unquote(parts.path)
        if not path:
            raise StoreError(f"file:// store URL has no path: {url!r}")
        return LocalStore(path, url=url)
    if scheme == "s3":
        if parts.username is not None or parts.password is not None:
            raise StoreError(
                f"credentials must not be embedded in the store URL {_redact_url(url)!r}; "
                "use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        if parts.query or parts.fragment:
            raise StoreError(f"s3:// store URL must not have a query or fragment: {url!r}")
        bucket = parts.netloc
        if not bucket:
            raise StoreError(f"s3:// store URL has no bucket: {url!r}")
        prefix = unquote(parts.path).strip("/")
        endpoint = os.environ.get("SQ_S3_ENDPOINT") or DEFAULT_S3_ENDPOINT
        secure_env = os.environ.get("SQ_S3_SECURE")
        secure: bool | None = None
        if "://" not in endpoint:
            secure = (secure_env or "false").strip().lower() in ("1", "true", "yes", "on")
        return S3Store(
            bucket,
            prefix,
            endpoint,
            access_key=_env("SQ_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
            secret_key=_env("SQ_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
            secure=secure,
            region=_env("SQ_S3_REGION", "AWS_REGION"),
            session_token=_env("AWS_SESSION_TOKEN"),
            url=url.rstrip("/"),
        )
    raise StoreError(
        f"unsupported store URL {_redact_url(url)!r}: use a local path, file:///path or s3://bucket/prefix"
    )
