"""Overhead benchmarks of asgi_perf against a bare app (see README.md here)."""
