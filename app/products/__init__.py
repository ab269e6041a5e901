"""GPU products and regions from Novita, cached (service), and their HTTP API (router)."""
