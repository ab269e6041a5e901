"""GPU instances: HTTP API (router), rules (service), records on Valkey (store), job handlers (handlers)."""
