"""Operator commands: ``scalequest audit`` (exactly-once check of a run), ``scalequest dlq
list|replay`` (dead letters) and ``scalequest soak`` (the pipeline under periodic kills)."""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import asynccontextmanager

from rich.console import Console
from rich.table import Table

from libs.errors import ConfigError


@asynccontextmanager
async def nats_session(nats_url: str | None, name: str):
    """A NATS connection (credentials/TLS from the SQ_* settings, as the services use them)."""
    from libs.queue.auth import client_options
    from libs.queue.topology import connect
    from libs.settings import CommonSettings, load_settings

    settings = load_settings(CommonSettings)
    url = nats_url or settings.nats_url
    try:
        nc, js = await asyncio.wait_for(
            connect(url, name=name, max_reconnect_attempts=10, **client_options(settings)), 15
        )
    except Exception as e:
        raise ConfigError(f"cannot connect to NATS at --nats-url/SQ_NATS_URL {url.rsplit('@', 1)[-1]}: {e}") from None
    try:
        yield nc, js
    finally:
        await nc.close()


# ---------------------------------------------------------------------------------- audit
def audit_table(rep) -> Table:
    t = Table(title=f"audit of run {rep.run_id} ({rep.state or 'unknown'})", show_header=True)
    t.add_column("check")
    t.add_column("value", justify="right")
    t.add_row("admitted items", str(rep.admitted))
    t.add_row("accepted (shard rows)", f"{rep.rows} ({rep.unique_rows} distinct)")
    t.add_row("rejected (ledger)", str(rep.rejected))
    t.add_row("  of which dead-lettered", str(rep.dead_lettered))
    t.add_row("lost (admitted, no outcome)", str(rep.lost))
    t.add_row("duplicates", str(len(rep.duplicates)))
    t.add_row("coordinator counters", ", ".join(f"{k}={v}" for k, v in rep.counters.items()))
    t.add_row("verdict", "[green]OK: every item exactly once[/]" if rep.ok else f"[red]{len(rep.problems)} problem(s)[/]")
    return t


async def cmd_audit(args) -> int:
    from libs.audit import audit_run, wait_drained
    from libs.queue.subjects import RUNS_BUCKET
    from libs.storage.objectstore import open_store

    console = Console(stderr=args.json)
    async with nats_session(args.nats_url, "scalequest-audit") as (_, js):
        if args.wait:
            backlog = await wait_drained(js, timeout=args.wait)
            if any(backlog.values()):
                console.print(f"[yellow]work queues not drained after {args.wait:.0f}s: {backlog}[/]")
        kv = await js.key_value(RUNS_BUCKET)
        rep = await audit_run(js, kv, open_store(args.store), args.run_id)
    if args.json:
        print(json.dumps(rep.as_dict()))
    else:
        console.print(audit_table(rep))
        for p in rep.problems:
            console.print(f"[red]- {p}[/]")
    return 0 if rep.ok else 1


# ---------------------------------------------------------------------------------- dlq
def _dlq_table(letters) -> Table:
    t = Table(title=f"{len(letters)} dead letter(s)")
    for col in ("seq", "stage", "reason", "deliveries", "item", "detail"):
        t.add_column(col, overflow="fold")
    for d in letters:
        t.add_row(str(d.seq), d.stage, d.reason, str(d.deliveries), d.item_id or "-", d.detail[:120])
    return t


async def cmd_dlq(args) -> int:
    from libs.queue.dlq import list_dead_letters, replay

    console = Console(stderr=bool(getattr(args, "json", False)))
    async with nats_session(args.nats_url, "scalequest-dlq") as (_, js):
        letters = await list_dead_letters(js, stage=args.stage, run_id=args.run, reason=args.reason)
        if args.dlq_cmd == "list":
            letters = letters[-args.limit:] if args.limit else letters
            if args.json:
                print(json.dumps([d.as_dict() for d in letters]))
            else:
                console.print(_dlq_table(letters))
            return 0
        if args.seq:
            wanted = set(args.seq)
            letters = [d for d in letters if d.seq in wanted]
            missing = wanted - {d.seq for d in letters}
            if missing:
                raise ConfigError(f"--seq: no dead letter with sequence {', '.join(map(str, sorted(missing)))}")
        elif not args.all:
            raise ConfigError("dlq replay needs --seq N [N ...] or --all (with optional --stage/--run/--reason filters)")
        if args.dry_run:
            console.print(_dlq_table(letters))
            console.print(f"dry run: would replay {len(letters)} dead letter(s)")
            return 0
        done = await replay(js, letters, keep=args.keep)
        skipped = len(letters) - len(done)
        console.print(f"replayed {len(done)} dead letter(s) onto their work queues"
                      + (f"; {skipped} skipped (unknown original subject)" if skipped else ""))  # fmt: skip
    return 0


# ---------------------------------------------------------------------------------- soak
async def cmd_soak(args) -> int:
    from libs.chaos import run_soak

    return await run_soak(args, Console(stderr=args.json))


def add_ops_parsers(sub, common) -> None:
    """``audit``, ``dlq`` and ``soak`` sub-commands (``common`` adds --store/--nats-url)."""
    au = sub.add_parser("audit", help="check that a run holds every item exactly once (shards, ledger, counters, DLQ)")
    common(au)
    au.add_argument("run_id")
    au.add_argument("--wait", type=float, default=0.0, help="first wait up to this many seconds for the work queues to drain")
    au.add_argument("--json", action="store_true")

    dq = sub.add_parser("dlq", help="list or replay dead-lettered messages")
    dsub = dq.add_subparsers(dest="dlq_cmd", required=True)
    for name in ("list", "replay"):
        p = dsub.add_parser(name, help="list dead letters" if name == "list" else "publish dead letters back onto their work queue")
        p.add_argument("--nats-url", default=None, help="NATS server URL (default SQ_NATS_URL)")
        p.add_argument("--stage", choices=["questiongen", "filter", "solver", "reward", "coordinator"], default=None)
        p.add_argument("--run", default=None, help="only dead letters of this run id")
        p.add_argument("--reason", default=None, help="only dead letters with this reason (e.g. max_deliver_exceeded)")
        if name == "list":
            p.add_argument("--limit", type=int, default=0, help="show only the newest N")
            p.add_argument("--json", action="store_true")
        else:
            p.add_argument("--seq", type=int, nargs="+", default=None, help="DLQ sequence numbers to replay")
            p.add_argument("--all", action="store_true", help="replay every dead letter matching the filters")
            p.add_argument("--keep", action="store_true", help="keep the dead letters in the DLQ after replaying")
            p.add_argument("--dry-run", action="store_true", help="show what would be replayed")

    so = sub.add_parser("soak", help="run the pipeline as separate processes for N minutes with periodic kills "
                        "(zero-cost engine by default); prints items/s over time, memory growth and losses")
    so.add_argument("--minutes", type=float, default=5.0)
    so.add_argument("--kill-every", type=float, default=20.0, help="seconds between kill -9 of a random stage process (0 = never)")
    so.add_argument("--nats-restart-every", type=float, default=0.0, help="seconds between nats-server restarts (0 = never)")
    so.add_argument("--target", type=int, default=0, help="accepted pairs per run (0 = sized to the duration)")
    so.add_argument("--delay", type=float, default=0.002, help="simulated seconds per engine call (engine=fake)")
    so.add_argument("--report-every", type=float, default=10.0, help="seconds between progress lines")
    so.add_argument("--workdir", default=None, help="where NATS, the store and process logs go (default: a temp dir)")
    so.add_argument("--seed", type=int, default=0)
    so.add_argument("--json", action="store_true", help="print the final summary as JSON")


def run_ops(args) -> int:
    if args.cmd == "audit":
        return asyncio.run(cmd_audit(args))
    if args.cmd == "dlq":
        return asyncio.run(cmd_dlq(args))
    if args.cmd == "soak":
        return asyncio.run(cmd_soak(args))
    print(f"scalequest: unknown command {args.cmd}", file=sys.stderr)
    return 2
