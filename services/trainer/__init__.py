"""trainer: Job entrypoints for QFT, QPO and downstream SFT (TRL), evaluation, and their Kubernetes Jobs."""
