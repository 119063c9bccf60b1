"""NATS users and permissions (libs/queue/auth.py) against a real nats-server running the
configuration ``scalequest nats-config`` writes: every service user can do its own work (consume
its queue, forward, ack, write its counters), and the server rejects what it may not do."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from nats.js import api

from libs.errors import ConfigError
from libs.queue import auth, subjects
from libs.queue.server import EmbeddedNats
from libs.queue.topology import DEDUP_BUCKET, LEDGER_BUCKET, connect, ensure_topology
from libs.settings import CommonSettings

STAGES = [q.consumer for q in subjects.WORK_QUEUES]  # questiongen ... coordinator
CLI = str(Path(sys.executable).with_name("scalequest"))


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return {u: f"pw-{u}-{secrets.token_hex(8)}" for u in auth.USERS}


@pytest.fixture(scope="module")
def secured_nats(passwords, tmp_path_factory) -> Iterator[EmbeddedNats]:
    """One nats-server for the module with the rendered authorization (bcrypt hashes); the
    admin user creates the topology once, as `scalequest bootstrap` does."""
    config = auth.render_config(passwords)
    srv = EmbeddedNats(store_dir=tmp_path_factory.mktemp("nats-auth"), config=config,
                       probe_user=auth.ADMIN_USER, probe_password=passwords[auth.ADMIN_USER])
    srv.start()

    async def bootstrap() -> None:
        nc, js = await connect(srv.url, "bootstrap", user=auth.ADMIN_USER, password=passwords[auth.ADMIN_USER],
                               max_reconnect_attempts=2)
        await ensure_topology(js)
        await nc.close()

    asyncio.run(bootstrap())
    try:
        yield srv
    finally:
        srv.close()


def settings_for(srv: EmbeddedNats, user: str, password: str) -> CommonSettings:
    return CommonSettings(nats_url=srv.url, nats_user=user, nats_password=password)


class Session:
    """A connection as one user that records the asynchronous errors the server sends."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc = None
        self.js = None

    async def open(self, url: str, **opts) -> Session:
        async def error_cb(e: Exception) -> None:
            self.errors.append(str(e))

        self.nc, self.js = await connect(url, "pytest-auth", error_cb=error_cb, max_reconnect_attempts=2, **opts)
        return self

    def violations(self, subject: str) -> list[str]:
        # nats-py lower-cases the server's message
        return [e for e in self.errors if "permissions violation" in e.lower() and subject.lower() in e.lower()]

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


@pytest_asyncio.fixture
async def admin(secured_nats, passwords) -> AsyncIterator[Session]:
    s = await Session().open(secured_nats.url, **auth.client_options(
        settings_for(secured_nats, auth.ADMIN_USER, passwords[auth.ADMIN_USER])))
    yield s
    await s.close()


@pytest_asyncio.fixture
async def login(secured_nats, passwords):
    opened: list[Session] = []

    async def open_as(user: str) -> Session:
        s = await Session().open(secured_nats.url, **auth.client_options(settings_for(secured_nats, user, passwords[user])))
        opened.append(s)
        return s

    yield open_as
    for s in opened:
        await s.close()


async def drain(admin: Session, stream: str) -> None:
    await admin.js.purge_stream(stream)


async def assert_denied_publish(session: Session, admin: Session, subject: str) -> None:
    """The server refuses the publish: a permissions violation naming the subject reaches the
    client, the JetStream publish gets no ack, and the message is not stored."""
    stream = auth.stream_of(subject) if subject.startswith(subjects.PREFIX) else None
    before = (await admin.js.stream_info(stream)).state.messages if stream else None
    with pytest.raises(nats.errors.TimeoutError):
        await session.js.publish(subject, b"forbidden", timeout=0.5)
    await session.nc.flush()
    for _ in range(50):
        if session.violations(subject):
            break
        await asyncio.sleep(0.02)
    assert session.violations(subject), f"no permissions violation for {subject}: {session.errors}"
    if stream:
        assert (await admin.js.stream_info(stream)).state.messages == before


# ------------------------------------------------------------------------------ unit: the table


def test_table_covers_every_service_and_stage_chain():
    table = auth.access_table()
    assert set(table) == {*STAGES, auth.ADMIN_USER, auth.TRAINER_USER}
    for i, q in enumerate(subjects.WORK_QUEUES[:-1]):
        a = table[q.consumer]
        assert a.consumes == (q,)
        assert subjects.WORK_QUEUES[i + 1].subject in a.publishes
        assert subjects.SINK.subject in a.publishes and subjects.dlq_subject(q.consumer) in a.publishes
        # nothing upstream, nothing of other stages, no events, no wildcards over the pipeline
        allowed = a.permissions()["publish"]["allow"]
        assert subjects.GENERATE.subject not in allowed
        assert not [s for s in allowed if s.startswith(f"{subjects.PREFIX}.") and s.endswith(">")]
        assert [s for s in allowed if s.startswith(f"{subjects.PREFIX}.dlq.")] == [subjects.dlq_subject(q.consumer)]
        assert a.permissions()["subscribe"]["allow"] == [auth.INBOX]
    coord = table["coordinator"].permissions()["publish"]["allow"]
    assert subjects.GENERATE.subject in coord and subjects.EVENTS_SUBJECTS in coord
    trainer = table[auth.TRAINER_USER].permissions()["publish"]["allow"]
    assert not [s for s in trainer if s.startswith((f"{subjects.PREFIX}.", f"$KV.{subjects.RUNS_BUCKET}"))]
    assert table[auth.ADMIN_USER].permissions()["publish"]["allow"] == [">"]


def test_bucket_names_match_the_code():
    from libs import streaming

    assert auth.TRAINER_BUCKET == streaming.PROGRESS_BUCKET
    assert auth.DEDUP_BUCKET == DEDUP_BUCKET and auth.LEDGER_BUCKET == LEDGER_BUCKET


def test_render_config_hashes_or_plain(passwords):
    text = auth.render_config(passwords)
    assert text.count('user: "') == len(auth.USERS)
    assert not [pw for pw in passwords.values() if pw in text]  # hashes only
    assert text.count('password: "$2') == len(auth.USERS)
    plain = auth.render_config(passwords, hash_passwords=False, users=["filter"])
    assert passwords["filter"] in plain and 'user: "questiongen"' not in plain and "PLAIN TEXT" in plain
    as_json = auth.render_config(passwords, users=["solver"], fmt="json")
    import json

    (entry,) = json.loads(as_json)["authorization"]["users"]
    assert entry["user"] == "solver" and entry["permissions"] == auth.permissions("solver")
    with pytest.raises(ConfigError, match="SQ_NATS_PASSWORD_REWARD"):
        auth.render_config({"filter": "x"}, users=["filter", "reward"])
    with pytest.raises(ConfigError, match="unknown NATS user"):
        auth.render_config(passwords, users=["mallory"])


def test_topology_mode_follows_authentication():
    assert auth.manages_topology(CommonSettings())
    assert not auth.manages_topology(CommonSettings(nats_user="filter", nats_password="x"))
    assert not auth.manages_topology(CommonSettings(nats_url="nats://filter:x@127.0.0.1:4222"))
    assert auth.manages_topology(CommonSettings(nats_user="admin", nats_password="x", nats_topology="ensure"))
    assert not auth.manages_topology(CommonSettings(nats_topology="verify"))


def test_nats_config_cli_prints_the_block(passwords, tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(auth.PASSWORD_ENV_PREFIX)}
    env.update({auth.PASSWORD_ENV_PREFIX + u.upper(): pw for u, pw in passwords.items()})
    out = subprocess.run([CLI, "nats-config"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# scalequest NATS users") and "authorization {" in out.stdout
    assert not [pw for pw in passwords.values() if pw in out.stdout + out.stderr]
    # a missing password is a one-line error naming the variable
    del env[auth.PASSWORD_ENV_PREFIX + "TRAINER"]
    bad = subprocess.run([CLI, "nats-config"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 1 and "SQ_NATS_PASSWORD_TRAINER" in bad.stderr and "Traceback" not in bad.stderr
    # passwords from a directory (a mounted Secret), written to a private file
    pwdir = tmp_path / "pw"
    pwdir.mkdir()
    (pwdir / "filter").write_text(passwords["filter"] + "\n")
    conf = tmp_path / "auth.conf"
    ok = subprocess.run([CLI, "nats-config", "--users", "filter", "--passwords-dir", str(pwdir), "--plain",
                         "--out", str(conf)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    assert f'password: "{passwords["filter"]}"' in conf.read_text() and conf.stat().st_mode & 0o077 == 0


# ------------------------------------------------------------------------------ real server


async def test_unauthenticated_and_wrong_password_are_refused(secured_nats, passwords):
    for opts in ({}, {"user": "filter", "password": passwords["solver"]}):
        with pytest.raises((nats.errors.Error, OSError)):
            await connect(secured_nats.url, "pytest-anon", allow_reconnect=False, **opts)


@pytest.mark.parametrize("stage", STAGES)
async def test_each_service_does_its_own_round_trip(stage, admin, login):
    """As the stage's user: verify the topology, pull its message, forward it, write its own
    counter key, ack. The admin sees the forwarded message and an empty queue."""
    access = auth.access_table()[stage]
    (q,) = access.consumes
    for stream in access.streams():
        await drain(admin, stream)
    run_id = "run" + secrets.token_hex(4)
    await admin.js.publish(q.subject, f"work for {stage}".encode(), headers={"Nats-Msg-Id": secrets.token_hex(8)})

    me = await login(stage)
    await auth.verify_topology(me.js, stage)
    sub = await me.js.pull_subscribe_bind(durable=q.consumer, stream=q.stream)
    (msg,) = await sub.fetch(1, timeout=5)
    assert msg.data == f"work for {stage}".encode()
    await msg.in_progress()
    for subject in access.publishes:
        target = subject.replace(">", f"{run_id}.shard")
        ack = await me.js.publish(target, msg.data, timeout=5)
        assert ack.stream == auth.stream_of(target)
    runs = await me.js.key_value(subjects.RUNS_BUCKET)
    await runs.put(f"run.{run_id}.stage.{stage}.replica-1", b'{"processed": 1}')
    assert (await runs.get(f"run.{run_id}.stage.{stage}.replica-1")).value == b'{"processed": 1}'
    assert f"run.{run_id}.stage.{stage}.replica-1" in await runs.keys()
    if stage == "filter":
        dedup = await me.js.key_value(DEDUP_BUCKET)
        await dedup.create(f"{run_id}.exact.abc", b"item-1")
    if stage == "coordinator":
        ledger = await me.js.key_value(LEDGER_BUCKET)
        await ledger.put(f"{run_id}.item-1", b"filter/duplicate")
        await runs.put(f"run.{run_id}.state", b'{"state": "completed", "run_id": "%s"}' % run_id.encode())
    await msg.ack_sync(timeout=5)
    assert me.errors == []

    info = await admin.js.consumer_info(q.stream, q.consumer)
    assert info.num_pending == 0 and info.num_ack_pending == 0
    for subject in access.publishes:
        stream = auth.stream_of(subject)
        assert (await admin.js.stream_info(stream)).state.messages >= 1, stream


@pytest.mark.parametrize("stage", STAGES[:-1])
async def test_stage_users_cannot_publish_outside_their_lane(stage, admin, login):
    me = await login(stage)
    others = [s for s in STAGES if s != stage]
    forbidden = [
        subjects.GENERATE.subject,  # only the coordinator admits work
        subjects.dlq_subject(others[0]),  # another stage's dead letters
        subjects.shard_subject("run-x"),  # run events are the coordinator's
    ]
    forbidden += [q.subject for q in subjects.WORK_QUEUES if q.subject not in auth.access_table()[stage].publishes]
    for subject in dict.fromkeys(forbidden):
        await assert_denied_publish(me, admin, subject)


async def test_questiongen_cannot_touch_other_stages_state(admin, login):
    me = await login("questiongen")
    runs = await me.js.key_value(subjects.RUNS_BUCKET)
    # another stage's counters, the run's state: refused by the server, nothing stored
    for key in ("run.r1.stage.filter.replica-1", "run.r1.state"):
        with pytest.raises(nats.errors.TimeoutError):
            await me.js.publish(f"$KV.{subjects.RUNS_BUCKET}.{key}", b"{}", timeout=1.0)
    admin_runs = await admin.js.key_value(subjects.RUNS_BUCKET)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await admin_runs.get("run.r1.state")
    assert me.violations("run.r1.state")
    # nor consume another stage's queue or change the topology
    with pytest.raises(nats.errors.TimeoutError):
        await me.js.consumer_info(subjects.FILTER.stream, subjects.FILTER.consumer, timeout=1.0)
    with pytest.raises(nats.errors.TimeoutError):
        await me.js.add_stream(api.StreamConfig(name="SQ_EVIL", subjects=["evil.>"]))
    assert me.violations("$JS.API.STREAM.CREATE.SQ_EVIL")
    assert runs is not None  # reading its bucket was allowed


async def test_restricted_user_cannot_run_ensure_topology(admin, login):
    """What `scalequest serve` would do at start-up without SQ_NATS_TOPOLOGY: denied; the
    service therefore only verifies (SQ_NATS_TOPOLOGY=auto with a user)."""
    me = await login("solver")
    with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
        await asyncio.wait_for(ensure_topology(me.nc.jetstream(timeout=0.5)), 3)
    assert me.violations(f"$JS.API.STREAM.CREATE.{subjects.GENERATE.stream}")


async def test_services_wait_for_the_bootstrap(passwords, tmp_path):
    """On a server without topology a restricted service reports what is missing (naming the
    bootstrap), and with a wait it starts once the admin has created the topology."""
    config = auth.render_config(passwords, hash_passwords=False, users=["reward", auth.ADMIN_USER])
    srv = EmbeddedNats(store_dir=tmp_path / "nats", config=config, probe_user=auth.ADMIN_USER,
                       probe_password=passwords[auth.ADMIN_USER])
    await asyncio.to_thread(srv.start)
    me = admin = None
    try:
        me = await Session().open(srv.url, user="reward", password=passwords["reward"])
        with pytest.raises(ConfigError, match=r"SQ_SCORE.*not found; run `scalequest bootstrap`"):
            await auth.verify_topology(me.js, "reward")
        waiting = asyncio.create_task(auth.verify_topology(me.js, "reward", wait_seconds=60, poll_seconds=0.2))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        admin = await Session().open(srv.url, user=auth.ADMIN_USER, password=passwords[auth.ADMIN_USER])
        await ensure_topology(admin.js)
        await asyncio.wait_for(waiting, 30)
        assert me.errors == []
    finally:
        for s in (me, admin):
            if s is not None:
                await s.close()
        await asyncio.to_thread(srv.close)


async def test_trainer_follows_events_read_only(admin, login):
    """The follower user: its own durable consumer on the events stream and its progress
    bucket; reads run state; publishes nothing into the pipeline."""
    await drain(admin, subjects.EVENTS_STREAM)
    run_id = "run" + secrets.token_hex(4)
    await admin.js.publish(subjects.shard_subject(run_id), b"shard-1")
    me = await login(auth.TRAINER_USER)
    await auth.verify_topology(me.js, auth.TRAINER_USER)
    cfg = api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL)
    sub = await me.js.pull_subscribe(f"{subjects.PREFIX}.events.{run_id}.>", durable=f"trainer-{run_id}",
                                     stream=subjects.EVENTS_STREAM, config=cfg)
    (msg,) = await sub.fetch(1, timeout=5)
    assert msg.data == b"shard-1"
    await msg.ack_sync(timeout=5)
    kv = await me.js.create_key_value(api.KeyValueConfig(bucket=auth.TRAINER_BUCKET, history=1))
    await kv.put(f"trainer-{run_id}", b"{}")
    state = b'{"state": "completed", "run_id": "%s"}' % run_id.encode()  # (a coordinator may list it later)
    await (await admin.js.key_value(subjects.RUNS_BUCKET)).put(f"run.{run_id}.state", state)
    runs = await me.js.key_value(subjects.RUNS_BUCKET)
    assert (await runs.get(f"run.{run_id}.state")).value == state
    assert f"run.{run_id}.state" in await runs.keys()
    assert me.errors == []
    for subject in (subjects.GENERATE.subject, subjects.run_end_subject(run_id), subjects.SINK.subject):
        await assert_denied_publish(me, admin, subject)
    with pytest.raises(nats.errors.TimeoutError):
        await me.js.publish(f"$KV.{subjects.RUNS_BUCKET}.run.{run_id}.state", b"{}", timeout=1.0)


async def test_follower_stream_starts_as_trainer(secured_nats, passwords, admin, tmp_path, monkeypatch):
    """libs.streaming.RunShardStream (streaming SFT) connects with SQ_NATS_USER/PASSWORD from
    the environment and sets itself up under the trainer's permissions."""
    from libs.streaming import RunShardStream, consumer_name

    monkeypatch.setenv("SQ_NATS_USER", auth.TRAINER_USER)
    monkeypatch.setenv("SQ_NATS_PASSWORD", passwords[auth.TRAINER_USER])
    stream = RunShardStream(secured_nats.url, "run-follow", consumer_name("job-a"), store=str(tmp_path),
                            fetch_timeout=0.5, connect_timeout=10)
    await asyncio.to_thread(stream.start)
    try:
        info = await admin.js.consumer_info(subjects.EVENTS_STREAM, consumer_name("job-a"))
        assert info.config.filter_subject == f"{subjects.PREFIX}.events.run-follow.>"
        await admin.js.key_value(auth.TRAINER_BUCKET)
    finally:
        await asyncio.to_thread(stream.close)


# ------------------------------------------------------------------------------ a real service


@pytest.mark.parametrize("service", ["filter", "coordinator"])
def test_service_runs_under_its_own_user(secured_nats, passwords, tmp_path, service):
    """`scalequest serve <service>` as its container runs it, logged in as its own user: it
    starts (verify-only topology), consumes an item (filter: a question it forwards or rejects;
    coordinator: an outcome for its sink), acks it, and stops cleanly, without a single
    permissions violation and without printing its password."""
    import json
    import os
    import signal
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from scalequest.common.v1 import items_pb2 as pb

    from libs.queue.server import free_port

    admin_pw = passwords[auth.ADMIN_USER]

    async def admin_do(fn):
        nc, js = await connect(secured_nats.url, "pytest-admin", user=auth.ADMIN_USER, password=admin_pw,
                               max_reconnect_attempts=2)
        try:
            return await fn(js)
        finally:
            await nc.close()

    queue = subjects.BY_CONSUMER[service]
    # the filter forwards or rejects (solve or sink); the coordinator's sink has no output here
    outputs = [subjects.SOLVE.stream, subjects.SINK.stream] if service == "filter" else []

    async def purge(js):
        for stream in {queue.stream, *outputs}:
            await js.purge_stream(stream)

    asyncio.run(admin_do(purge))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQ_")}
    env.update({
        "SQ_NATS_URL": secured_nats.url, "SQ_NATS_USER": service, "SQ_NATS_PASSWORD": passwords[service],
        "SQ_ENGINE": "fake", "SQ_GRPC_HOST": "127.0.0.1", "SQ_GRPC_PORT": str(port),
        "SQ_STORE_URL": str(tmp_path / "store"), "SQ_LOG_JSON": "true", "SQ_LOG_LEVEL": "INFO",
    })
    proc = subprocess.Popen([CLI, "serve", service], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, f"{service} never became SERVING"
                time.sleep(0.2)

        question = pb.Question(schema_version=pb.SCHEMA_VERSION_1, run_id="authrun", item_id="item-1", seed=1,
                               text="What is 2 + 3? Give the answer as a number.", generator_model="fake")
        if service == "filter":
            payload = question.SerializeToString()
        else:
            payload = pb.Outcome(rejection=pb.Rejection(schema_version=pb.SCHEMA_VERSION_1, run_id="authrun",
                                                        item_id="item-1", stage="filter", reason="duplicate")).SerializeToString()

        async def publish_and_wait(js):
            await js.publish(queue.subject, payload, headers={"Nats-Msg-Id": f"authrun.item-1.{service}"})
            end = time.monotonic() + 60
            while time.monotonic() < end:
                info = await js.consumer_info(queue.stream, queue.consumer)
                out = sum([(await js.stream_info(s)).state.messages for s in outputs])
                if info.num_pending == 0 and info.num_ack_pending == 0 and (out >= 1 or not outputs):
                    return True
                await asyncio.sleep(0.2)
            raise AssertionError(f"{service} did not process its message")

        assert asyncio.run(admin_do(publish_and_wait))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "permissions violation" not in err.lower(), err[-3000:]
    assert passwords[service] not in err
    steps = [json.loads(ln).get("step") for ln in err.splitlines() if ln.startswith("{")]
    assert "drain_nats" in steps
