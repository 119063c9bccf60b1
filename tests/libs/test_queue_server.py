"""EmbeddedNats: start/stop/restart of a real nats-server; clients survive a restart."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from libs.queue import subjects
from libs.queue.server import EmbeddedNats, NatsServerNotFound, find_nats_server


def test_find_nats_server(monkeypatch):
    path = find_nats_server()
    assert os.access(path, os.X_OK)
    monkeypatch.setenv("SQ_NATS_SERVER", "/nonexistent/nats-server")
    with pytest.raises(NatsServerNotFound, match="SQ_NATS_SERVER"):
        find_nats_server()


def test_context_manager_binds_localhost_and_cleans_up():
    with EmbeddedNats() as srv:
        assert srv.url.startswith("nats://127.0.0.1:")
        store = srv.store_dir
        assert srv.log_path.exists()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=2) as s:
            assert s.recv(5) == b"INFO "
    assert not srv.running
    assert not store.exists()  # temporary store removed


async def test_restart_keeps_port_store_and_client(nats_server, nats_conn, js):
    url = nats_server.url
    await js.publish(subjects.SOLVE.subject, b"before", headers={"Nats-Msg-Id": "m1"})
    reconnects = nats_conn.stats["reconnects"]
    nats_server.restart()
    assert nats_server.url == url
    # The same client reconnects on its own (a request written to the dead socket would be lost,
    # so wait for the reconnect first) and the stored message survived.
    for _ in range(200):
        if nats_conn.stats["reconnects"] > reconnects and nats_conn.is_connected:
            break
        await asyncio.sleep(0.05)
    assert nats_conn.is_connected
    ack = await js.publish(subjects.SOLVE.subject, b"after", headers={"Nats-Msg-Id": "m2"}, timeout=15)
    assert ack.seq == 2
    # Dedup state survives the restart too.
    dup = await js.publish(subjects.SOLVE.subject, b"before", headers={"Nats-Msg-Id": "m1"})
    assert dup.duplicate
    assert (await js.stream_info(subjects.SOLVE.stream)).state.messages == 2


def test_stop_start_same_port(tmp_path):
    srv = EmbeddedNats(store_dir=tmp_path / "s")
    try:
        srv.start()
        port = srv.port
        srv.stop(kill=True)
        assert not srv.running
        srv.start()
        assert srv.port == port and srv.running
    finally:
        srv.close()
    assert (tmp_path / "s").exists()  # a given store dir is never removed
