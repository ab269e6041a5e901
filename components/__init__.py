"""Pulumi components of novita-gpu-api: settings, Valkey, the API image and the API container."""
