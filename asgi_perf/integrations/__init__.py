"""Integrations of asgi_perf with other tools (import the one you use)."""
