"""ObjectStore behaviour, run against LocalStore and a real S3 endpoint (SeaweedFS)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from libs.errors import NotFound
from libs.storage import (
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    StoreError,
    open_store,
)
from libs.storage.objectstore import validate_key

BAD_KEYS = ["", "/abs", "a/../b", "..", "../x", "a//b", "a/./b", "./a", "a\\b", "a\x00b"]


# --------------------------------------------------------------------------------------------
# behaviour shared by both backends (any_store is parametrized: local, s3)


def test_put_get_roundtrip(any_store: ObjectStore) -> None:
    payload = bytes(range(256)) * 100
    any_store.put_bytes("a/b/c.bin", payload)
    assert any_store.get_bytes("a/b/c.bin") == payload
    any_store.put_bytes("a/b/c.bin", b"second")  # overwrite
    assert any_store.get_bytes("a/b/c.bin") == b"second"
    any_store.put_bytes("empty", b"")
    assert any_store.get_bytes("empty") == b""
    any_store.put_bytes("unicode/é ü 1.txt", "ünïcode".encode())
    assert any_store.get_bytes("unicode/é ü 1.txt") == "ünïcode".encode()


def test_missing_object(any_store: ObjectStore) -> None:
    assert any_store.list() == []  # fresh store (S3: bucket not even created yet)
    with pytest.raises(ObjectNotFound) as ei:
        any_store.get_bytes("nope/missing.bin")
    assert isinstance(ei.value, StoreError) and isinstance(ei.value, NotFound)
    assert "nope/missing.bin" in str(ei.value)
    assert not any_store.exists("nope/missing.bin")
    any_store.delete("nope/missing.bin")  # no error
    with pytest.raises(ObjectNotFound):
        any_store.get_file("nope/missing.bin", "/tmp/never-written-by-sq-tests")
    assert not os.path.exists("/tmp/never-written-by-sq-tests")


def test_exists_and_delete(any_store: ObjectStore) -> None:
    any_store.put_bytes("d/x", b"1")
    any_store.put_bytes("d/y", b"2")
    assert any_store.exists("d/x")
    assert not any_store.exists("d")  # a "directory" is not an object
    any_store.delete("d/x")
    assert not any_store.exists("d/x")
    assert any_store.list("d/") == ["d/y"]
    any_store.delete("d/x")  # idempotent


def test_list(any_store: ObjectStore) -> None:
    keys = ["z", "a/1", "a/2", "a/b/3", "ab/4", "b/5", "a/b/c/d/6"]
    for k in keys:
        any_store.put_bytes(k, k.encode())
    assert any_store.list() == sorted(keys)
    assert any_store.list("") == sorted(keys)
    assert any_store.list("a/") == ["a/1", "a/2", "a/b/3", "a/b/c/d/6"]
    assert any_store.list("a") == ["a/1", "a/2", "a/b/3", "a/b/c/d/6", "ab/4"]  # plain string prefix
    assert any_store.list("a/b") == ["a/b/3", "a/b/c/d/6"]
    assert any_store.list("a/b/c/") == ["a/b/c/d/6"]
    assert any_store.list("missing/") == []
    assert any_store.list("zz") == []


def test_put_file_get_file(any_store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(payload)
    any_store.put_file("files/big.bin", src)
    assert any_store.get_bytes("files/big.bin") == payload
    dest = tmp_path / "out" / "nested" / "big.bin"  # parents created
    any_store.get_file("files/big.bin", dest)
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["big.bin"]  # no temp file left
    with pytest.raises(StoreError):
        any_store.put_file("files/none.bin", tmp_path / "does-not-exist")


def test_uri_and_url(any_store: ObjectStore, any_store_url: str) -> None:
    assert any_store.url == any_store_url
    uri = any_store.uri("runs/r1/x.parquet")
    if isinstance(any_store, LocalStore):
        assert os.path.isabs(uri)
        any_store.put_bytes("runs/r1/x.parquet", b"p")
        assert Path(uri).read_bytes() == b"p"
    else:
        assert uri == f"{any_store_url}/runs/r1/x.parquet"
        assert uri.startswith("s3://bucket-")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_key_validation(any_store: ObjectStore, key: str) -> None:
    for op in (
        lambda: any_store.put_bytes(key, b"x"),
        lambda: any_store.get_bytes(key),
        lambda: any_store.exists(key),
        lambda: any_store.delete(key),
        lambda: any_store.uri(key),
    ):
        with pytest.raises(StoreError):
            op()
    with pytest.raises(StoreError):
        any_store.list("../")


def test_validate_key_accepts_normal_keys() -> None:
    for k in ["a", "a/b/c.parquet", "runs/r-1/shards/w0-000001.parquet", ".hidden", "a b/c"]:
        assert validate_key(k) == k


def test_concurrent_readers_never_see_partial(any_store: ObjectStore) -> None:
    """Readers see either the old or the new object, never a mix or a truncated one."""
    size = 256 * 1024 if isinstance(any_store, LocalStore) else 64 * 1024
    versions = [bytes([i]) * size for i in range(4)]
    any_store.put_bytes("race/obj", versions[0])
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            data = any_store.get_bytes("race/obj")
            if data not in versions:
                errors.append(f"partial read: len={len(data)}")
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(40 if isinstance(any_store, LocalStore) else 10):
            any_store.put_bytes("race/obj", versions[i % 4])
    finally:
        stop.set()
        t.join()
    assert not errors
    assert any_store.list("race/") == ["race/obj"]


# --------------------------------------------------------------------------------------------
# LocalStore specifics


def test_local_atomic_write_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("k/obj", b"old")

    # a temp file of an in-flight write is invisible to list()
    (tmp_path / "s" / "k" / ".obj.abc123.sqtmp").write_bytes(b"half")
    assert store.list() == ["k/obj"]
    os.unlink(tmp_path / "s" / "k" / ".obj.abc123.sqtmp")

    # a write that fails at the rename leaves the old object intact and no temp file behind
    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StoreError, match="No space left"):
        store.put_bytes("k/obj", b"new")
    monkeypatch.undo()
    assert store.get_bytes("k/obj") == b"old"
    assert sorted(os.listdir(tmp_path / "s" / "k")) == ["obj"]
    assert store.list() == ["k/obj"]


def test_local_temp_name_is_reserved(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(StoreError):
        store.put_bytes("a/.x.123.sqtmp", b"")


def test_local_files_are_readable_by_others(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("x", b"1")
    assert (tmp_path / "x").stat().st_mode & 0o044 == 0o044


def test_local_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError):
        LocalStore(tmp_path / "f")


# --------------------------------------------------------------------------------------------
# open_store


def test_open_store_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_store(str(tmp_path / "plain"))
    assert isinstance(s, LocalStore) and s.root == (tmp_path / "plain").resolve()
    assert s.url == str(tmp_path / "plain")
    s = open_store(f"file://{tmp_path}/viaurl")
    assert isinstance(s, LocalStore) and s.root == (tmp_path / "viaurl").resolve()
    assert s.url == f"file://{tmp_path}/viaurl"
    monkeypatch.chdir(tmp_path)
    s = open_store("rel/dir")
    assert isinstance(s, LocalStore) and s.root == (tmp_path / "rel" / "dir").resolve()
    with pytest.raises(StoreError):
        open_store("file://otherhost/x")


def test_open_store_s3_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("SQ_S3_ENDPOINT", "SQ_S3_ACCESS_KEY", "SQ_S3_SECRET_KEY", "SQ_S3_REGION", "SQ_S3_SECURE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecretvalue")
    s = open_store("s3://my-bucket/some/prefix/")
    assert isinstance(s, S3Store)
    assert (s.bucket, s.prefix, s.endpoint) == ("my-bucket", "some/prefix", "http://127.0.0.1:9000")
    assert s.url == "s3://my-bucket/some/prefix"
    assert s.uri("k/v") == "s3://my-bucket/some/prefix/k/v"
    assert "supersecretvalue" not in repr(s)

    monkeypatch.setenv("SQ_S3_ENDPOINT", "https://s3.example.com")
    monkeypatch.setenv("SQ_S3_REGION", "eu-west-1")
    s = open_store("s3://bucket2")
    assert isinstance(s, S3Store)
    assert (s.bucket, s.prefix, s.endpoint) == ("bucket2", "", "https://s3.example.com")
    assert s.uri("k") == "s3://bucket2/k"
    assert s._client._base_url.is_https


@pytest.mark.parametrize(
    "url",
    ["gs://bucket/x", "ftp://host/x", "s3://", "s3://Bad_Bucket/x", "s3://AKIA:topsecret@bucket/x"],
)
def test_open_store_rejects(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQ_S3_ENDPOINT", raising=False)
    with pytest.raises(StoreError) as ei:
        open_store(url)
    msg = str(ei.value)
    assert "topsecret" not in msg
    if url.startswith(("gs:", "ftp:")):
        assert url in msg


def test_s3_unreachable_endpoint_is_storeerror_without_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SQ_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecretvalue")
    store = open_store("s3://bucket-x/p")
    t0 = time.monotonic()
    with pytest.raises(StoreError) as ei:
        store.put_bytes("k", b"v")
    assert time.monotonic() - t0 < 15
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg
    assert "supersecretvalue" not in msg and "AKIAEXAMPLE" not in msg
    assert not isinstance(ei.value, ObjectNotFound)


# --------------------------------------------------------------------------------------------
# S3Store specifics (real SeaweedFS)


@pytest.mark.s3
def test_s3_bad_credentials(s3_server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQ_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-xyz")
    store = open_store("s3://bucket-creds/p")
    with pytest.raises(StoreError) as ei:
        store.put_bytes("k", b"v")
    assert "wrong-secret-value-xyz" not in str(ei.value)
    assert s3_server.endpoint in str(ei.value)


@pytest.mark.s3
def test_s3_content_type_and_layout(s3_server, s3_store_url: str) -> None:
    store = open_store(s3_store_url)
    store.put_bytes("m/manifest.json", b"{}", content_type="application/json")
    bucket = s3_store_url.split("/")[2]
    st = s3_server.client().stat_object(bucket_name=bucket, object_name="prefix/m/manifest.json")
    assert st.content_type == "application/json"


@pytest.mark.s3
def test_s3_prefixes_are_isolated_and_bucket_created_concurrently(s3_store_url: str) -> None:
    bucket_url = s3_store_url.rsplit("/", 1)[0]  # s3://bucket-xxx, not created yet
    stores = [open_store(f"{bucket_url}/p{i}") for i in range(4)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            stores[i].put_bytes("k", str(i).encode())
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, s in enumerate(stores):
        assert s.list() == ["k"]
        assert s.get_bytes("k") == str(i).encode()
    assert open_store(bucket_url).list() == [f"p{i}/k" for i in range(4)]


@pytest.mark.s3
def test_s3_reads_do_not_create_bucket_and_writes_recreate_it(s3_server, s3_store_url: str) -> None:
    store = open_store(s3_store_url)
    bucket = s3_store_url.split("/")[2]
    client = s3_server.client()
    assert store.list() == [] and not store.exists("k")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("k")
    assert not client.bucket_exists(bucket_name=bucket)
    store.put_bytes("k", b"1")
    assert client.bucket_exists(bucket_name=bucket)
    # bucket removed behind the store's back: the next write recreates it
    client.remove_object(bucket_name=bucket, object_name="prefix/k")
    client.remove_bucket(bucket_name=bucket)
    store.put_bytes("k", b"2")
    assert store.get_bytes("k") == b"2"
