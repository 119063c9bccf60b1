import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

pytest_plugins = ["tests.fixtures.nats", "tests.fixtures.s3", "tests.fixtures.certs"]
