# Entry points. Every target creates/updates .venv first (scripts/bootstrap.sh is idempotent).
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export VLLM_CPU_KVCACHE_SPACE ?= 2
export TOKENIZERS_PARALLELISM := false

.PHONY: venv run test test-slow test-faults test-all protos lint

venv:
	@bash scripts/bootstrap.sh

# The main job on the embedded default: prepare the packaged model, run a 16-pair pipeline.
run: venv
	.venv/bin/scalequest prepare-model
	.venv/bin/scalequest run --target 16

# Default suite (well under 20 minutes on 2 CPU cores): unit, integration, real-model end to end.
test: venv
	$(PY) -m pytest -m "not slow and not gpu" -p no:cacheprovider

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
	$(PY) -m ruff check libs services scalequest_cli tests
