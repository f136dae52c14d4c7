"""The engine's contracts that the service shares: torch-free, so `api/` and `storage/` may import this package.

Nothing here imports torch, diffusers, transformers or peft (tests/test_architecture.py checks it); the engine
imports these definitions rather than restating them, and so do the service's schemas and checks.
"""
