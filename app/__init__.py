"""Novita GPU instance API: FastAPI service with a durable job queue and a cache on Valkey."""

__version__ = "0.1.0"
