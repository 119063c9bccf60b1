# Entry points. Every target creates/updates .venv first (scripts/bootstrap.sh is idempotent).
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export VLLM_CPU_KVCACHE_SPACE ?= 2
export TOKENIZERS_PARALLELISM := false

.PHONY: venv run test test-slow test-faults test-all protos lint bench bench-orchestration bench-scaling bench-efficiency bench-memory bench-peer bench-plot

venv:
	@bash scripts/bootstrap.sh

# The main job on the embedded default: prepare the packaged model, run a 16-pair pipeline.
run: venv
	.venv/bin/scalequest prepare-model
	.venv/bin/scalequest run --target 16

# Default suite (well under 20 minutes on 2 CPU cores): unit, integration, real-model end to end.
test: venv
	$(PY) -m pytest -m "not slow and not gpu" -p no:cacheprovider --durations=25

# Longer tests (several real-model runs, fault scenarios).
test-slow: venv
	$(PY) -m pytest -m "slow and not gpu" -p no:cacheprovider

# Fault injection only (also part of `make test`): kill -9, nats-server restart, S3 outage, poison.
test-faults: venv
	$(PY) -m pytest -m "faults" -p no:cacheprovider -s

test-all: venv
	$(PY) -m pytest -m "not gpu" -p no:cacheprovider

protos: venv
	bash scripts/gen_protos.sh

lint: venv
	$(PY) -m ruff check libs services scalequest_cli tests benchmarks

# Benchmarks (docs/benchmarks.md): each prints tables and writes benchmarks/results/<name>.json.
# Not tests: nothing asserts a speed. BENCH_ARGS is passed through, e.g. BENCH_ARGS="--repeats 1".
bench-orchestration: venv
	$(PY) -m benchmarks.orchestration $(BENCH_ARGS)

bench-scaling: venv
	$(PY) -m benchmarks.scaling $(BENCH_ARGS)

bench-efficiency: venv
	.venv/bin/scalequest prepare-model
	$(PY) -m benchmarks.efficiency $(BENCH_ARGS)

bench-memory: venv
	.venv/bin/scalequest prepare-model
	$(PY) -m benchmarks.memory $(BENCH_ARGS)

bench-peer: venv
	.venv/bin/scalequest prepare-model
	bash scripts/bench_peer_venv.sh
	$(PY) -m benchmarks.peer $(BENCH_ARGS)

bench-plot: venv
	$(PY) -m benchmarks.plot

bench: bench-orchestration bench-scaling bench-efficiency bench-memory bench-peer bench-plot
