"""The shop example: an e-commerce API over SQLite, wrapped by asgi_perf (see app.py)."""
