"""`scalequest` command line: run (embedded pipeline), serve, status, export, report, prepare-model,
train (QFT/QPO/SFT) and eval.

User mistakes (bad flags, bad config, unreachable servers) end with a one-line message and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

EXIT_USAGE = 2
EXIT_ERROR = 1


def _positive(name: str):
    def conv(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {v!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {n}")
        return n

    return conv


def _store_arg(v: str) -> str:
    if "://" in v and not v.startswith(("s3://", "file://")):
        raise argparse.ArgumentTypeError(f"--store must be a directory or s3://BUCKET/PREFIX, got {v!r}")
    if v.startswith("s3://") and len(v) <= len("s3://"):
        raise argparse.ArgumentTypeError("--store s3:// URL needs a bucket")
    return v


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=_store_arg, default=os.environ.get("SQ_STORE_URL", "./scalequest-data"),
                   help="object store: a directory or s3://BUCKET/PREFIX (endpoint: SQ_S3_ENDPOINT)")
    p.add_argument("--nats-url", default=None, help="NATS server URL (run: default starts an embedded nats-server)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scalequest", description="ScaleQuest math data synthesis")
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the whole pipeline in this process (embedded mode)")
    _common(r)
    r.add_argument("--target", type=_positive("--target"), required=True, help="accepted pairs to produce")
    r.add_argument("--type", dest="run_type", choices=["synthesis", "qpo"], default="synthesis",
                   help="synthesis: question-solution pairs; qpo: preference pairs from optimizer rewrites (METHOD §2)")
    r.add_argument("--optimizer-model", default="",
                   help="qpo: optimizer model (default: the generator's own engine); with --optimizer-base-url a served model name")
    r.add_argument("--optimizer-base-url", default="", help="qpo: OpenAI-compatible endpoint serving the optimizer")
    r.add_argument("--optimizer-max-tokens", type=_positive("--optimizer-max-tokens"), default=512)
    r.add_argument("--model", default="default", help="model directory ('default' = packaged SmolLM2-135M-Instruct)")
    r.add_argument("--engine", choices=["vllm", "fake"], default="vllm", help="inference engine")
    # The packaged model is an untuned instruct model: from-scratch sampling needs a QFT-tuned
    # generator (METHOD §3), so the embedded default asks for problems ("instructed").
    r.add_argument("--mode", choices=["scratch", "instructed"], default="instructed",
                   help="question sampling mode (scratch needs a QFT-tuned generator)")
    r.add_argument("--solver-prompt", choices=["zero_shot", "one_shot"], default="one_shot",
                   help="one_shot adds a worked example (needed by the tiny default model to write \\boxed{})")
    r.add_argument("--n-candidates", type=_positive("--n-candidates"), default=4)
    r.add_argument("--seed", type=int, default=1234)
    r.add_argument("--question-max-tokens", type=_positive("--question-max-tokens"), default=256)
    r.add_argument("--solution-max-tokens", type=_positive("--solution-max-tokens"), default=512)
    r.add_argument("--judge-max-tokens", type=_positive("--judge-max-tokens"), default=128)
    r.add_argument("--no-judge", action="store_true", help="skip the solvability judge")
    r.add_argument("--selection-rule", choices=["top_reward", "majority_then_reward", "require_agreement"],
                   default="majority_then_reward")
    r.add_argument("--min-agreement", type=_positive("--min-agreement"), default=2)
    r.add_argument("--difficulty-keep", default="",
                   help="target difficulty mix UPPER:KEEP,... (e.g. 0:0.5 keeps half of the questions all candidates agreed on)")
    r.add_argument("--answer-fallback", action="store_true", help="accept 'the answer is N' when no \\boxed{}")
    r.add_argument("--max-outstanding", type=_positive("--max-outstanding"), default=32)
    r.add_argument("--shard-max-records", type=_positive("--shard-max-records"), default=8)
    r.add_argument("--shard-max-seconds", type=float, default=20.0)
    r.add_argument("--run-id", default="", help="explicit run id")
    r.add_argument("--json", action="store_true", help="print the final status as JSON")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("serve", help="run one service, as its container does (settings from SQ_* env)")
    s.add_argument("service", choices=["questiongen", "filter", "solver", "reward", "coordinator"])

    st = sub.add_parser("status", help="progress and counters of a run")
    _common(st)
    st.add_argument("run_id")
    st.add_argument("--json", action="store_true")

    ex = sub.add_parser("export", help="export a run's accepted records")
    _common(ex)
    ex.add_argument("run_id")
    ex.add_argument("--format", choices=["jsonl", "parquet"], required=True)
    ex.add_argument("--out", required=True, help="output file")

    sr = sub.add_parser("start", help="start a run on a running coordinator (e.g. in Kubernetes) and follow it")
    sr.add_argument("--coordinator", default=os.environ.get("SQ_COORDINATOR", "127.0.0.1:50060"),
                    help="coordinator gRPC address HOST:PORT (default SQ_COORDINATOR or 127.0.0.1:50060)")
    sr.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the coordinator")
    sr.add_argument("--target", type=_positive("--target"), required=True, help="accepted pairs to produce")
    sr.add_argument("--type", dest="run_type", choices=["synthesis", "qpo"], default=None)
    sr.add_argument("--seed", type=_positive("--seed"), default=None)
    sr.add_argument("--n-candidates", type=_positive("--n-candidates"), default=None)
    sr.add_argument("--mode", choices=["scratch", "instructed"], default=None)
    sr.add_argument("--selection-rule", choices=["top_reward", "majority_then_reward", "require_agreement"], default=None)
    sr.add_argument("--min-agreement", type=_positive("--min-agreement"), default=None)
    sr.add_argument("--difficulty-keep", default="", help="target difficulty mix UPPER:KEEP,...")
    sr.add_argument("--no-judge", action="store_true", help="skip the solvability judge")
    sr.add_argument("--run-id", default="", help="explicit run id")
    sr.add_argument("--detach", action="store_true", help="print the run id and return without following")
    sr.add_argument("--json", action="store_true", help="print the final status as JSON")
    sr.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    bs = sub.add_parser("bootstrap", help="create the JetStream streams, consumers and KV buckets (idempotent; "
                        "the chart's hook Job); settings from SQ_* env")
    bs.add_argument("--replicas", type=_positive("--replicas"), default=None,
                    help="stream replicas (default SQ_NATS_REPLICAS or 1; 3 on a clustered NATS)")
    bs.add_argument("--connect-timeout", type=float, default=120.0, help="seconds to wait for NATS")
    bs.add_argument("--check-store", action="store_true", help="also check that SQ_STORE_URL is reachable and writable")

    rp = sub.add_parser("report", help="a run's funnel, difficulty/agreement/length distributions and throughput")
    _common(rp)
    rp.add_argument("run_id")
    rp.add_argument("--png", default=None, help="where to write the PNG (default: ./runs_<RUN_ID>_report.png)")
    rp.add_argument("--no-png", action="store_true", help="terminal (or JSON) report only")
    rp.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")

    nc = sub.add_parser("nats-config", help="print the nats-server authorization block: one user per service, "
                        "each allowed only its own subjects (docs/security.md)")
    nc.add_argument("--users", default="", help="comma-separated users to include (default: all of "
                    "questiongen,filter,solver,reward,coordinator,admin,trainer)")
    nc.add_argument("--passwords-dir", default=None, help="directory with one file per user holding its password "
                    "(e.g. a mounted Secret); default: the environment, SQ_NATS_PASSWORD_<USER>")
    nc.add_argument("--plain", action="store_true", help="plain-text passwords instead of bcrypt hashes")
    nc.add_argument("--format", dest="fmt", choices=["conf", "json"], default="conf",
                    help="conf: nats-server config block; json: the same as JSON (the nats chart's config.merge)")
    nc.add_argument("--out", default=None, help="write to this file (mode 0600) instead of stdout")

    from scalequest_cli.ops import add_ops_parsers

    add_ops_parsers(sub, _common)

    pm = sub.add_parser("prepare-model", help="convert the packaged default model into the model cache")
    pm.add_argument("--cache-dir", default=None)

    from services.trainer.cli import add_eval_parser, add_train_parser

    add_train_parser(sub)
    add_eval_parser(sub)
    return ap


#: One-shot commands that only read the store end with ``os._exit`` once their output and logs
#: are flushed, when run as the ``scalequest`` program. Interpreter teardown after ``export``
#: aborted about once in 30 runs on a loaded 2-core machine ("terminate called without an
#: active exception", exit -6, after the file had been written): a native library's thread
#: destructor racing the exit. They hold nothing that teardown would still need to release.
QUICK_EXIT_COMMANDS = frozenset({"export", "status"})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc = _main(args)
    if argv is None and args.cmd in QUICK_EXIT_COMMANDS:  # the console program, not a caller in Python
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def _main(args: argparse.Namespace) -> int:
    from libs.errors import ScaleQuestError
    from libs.logging import setup_logging
    from libs.storage.objectstore import StoreError

    setup_logging(os.environ.get("SQ_LOG_LEVEL", "WARNING" if args.cmd == "run" else "INFO").upper(),
                  json=os.environ.get("SQ_LOG_JSON", "1") not in ("0", "false"), service=f"cli-{args.cmd}")
    try:
        if args.cmd == "run":
            # vLLM's own INFO lines (engine config, kernels, KV cache) would bury the progress
            # view of an interactive run; SQ_LOG_LEVEL=DEBUG or VLLM_LOGGING_LEVEL brings them back.
            if os.environ.get("SQ_LOG_LEVEL", "").upper() != "DEBUG":
                os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
            from scalequest_cli.commands import cmd_run

            return asyncio.run(cmd_run(args))
        if args.cmd == "serve":
            from scalequest_cli.commands import cmd_serve

            return asyncio.run(cmd_serve(args.service))
        if args.cmd == "status":
            from scalequest_cli.commands import cmd_status

            return asyncio.run(cmd_status(args))
        if args.cmd == "export":
            from scalequest_cli.commands import cmd_export

            return cmd_export(args)
        if args.cmd == "start":
            from scalequest_cli.commands import cmd_start

            return asyncio.run(cmd_start(args))
        if args.cmd == "bootstrap":
            from scalequest_cli.commands import cmd_bootstrap

            return asyncio.run(cmd_bootstrap(args))
        if args.cmd == "report":
            from scalequest_cli.commands import cmd_report

            return asyncio.run(cmd_report(args))
        if args.cmd == "nats-config":
            from scalequest_cli.commands import cmd_nats_config

            return cmd_nats_config(args)
        if args.cmd in ("audit", "dlq", "soak"):
            from scalequest_cli.ops import run_ops

            return run_ops(args)
        if args.cmd in ("train", "eval"):
            from services.trainer.cli import run_cli

            return run_cli(args)
        if args.cmd == "prepare-model":
            from libs.models.default_model import ensure_default_model

            print(ensure_default_model(args.cache_dir))
            return 0
    except (ScaleQuestError, StoreError) as e:
        from libs.logging import redact

        print(f"scalequest: error: {redact(str(e))}", file=sys.stderr)  # no secret values, no URL passwords
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("scalequest: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
