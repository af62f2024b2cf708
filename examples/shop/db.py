"""The shop's SQLite database: schema, deterministic seed data, per-thread connections.

Plain ``sqlite3`` from the standard library, no ORM, so every query the
profile shows is one you can read here.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from asgi_perf.db import instrument

# Bump when the schema or the seed data change: the default file name carries
# it, so an old cached database is never opened by newer code.
DATA_VERSION = 2
DEFAULT_PRODUCTS = 50_000
USERS = 500
SEED = 20_241_129
# Every account starts with an order history (GET /api/orders): 10 to 14
# past orders of 1 to 5 lines each, placed over the year before SEEDED_AT.
ORDERS_PER_USER = (10, 14)
LINES_PER_ORDER = (1, 5)
SEEDED_AT = 1_764_547_200.0  # 2025-12-01 00:00 UTC: the same history on every machine
YEAR_S = 365 * 24 * 3600
# Far below what a production login should use (OWASP suggests 600 000 for
# PBKDF2-SHA256): high enough that login shows a real hashing cost in the
# profile, low enough that seeding USERS accounts stays well under a second.
PBKDF2_ITERATIONS = 2_000
# Writers (login, cart, checkout) queue for SQLite's single write lock
# instead of failing with "database is locked" at peak load.
BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    salt BLOB NOT NULL,
    password_hash BLOB NOT NULL
);
CREATE TABLE sessions (
    token TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    created_at REAL NOT NULL
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    sku TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    category TEXT NOT NULL,
    price_cents INTEGER NOT NULL
);
CREATE TABLE cart_items (
    user_id INTEGER NOT NULL REFERENCES users(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL,
    PRIMARY KEY (user_id, product_id)
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    created_at REAL NOT NULL,
    total_cents INTEGER NOT NULL
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL,
    price_cents INTEGER NOT NULL
);
CREATE INDEX orders_by_user ON orders(user_id);
CREATE INDEX order_items_by_order ON order_items(order_id);
-- Covers GET /products/categories: its GROUP BY reads this index, in
-- category order, instead of every row of the table and a temporary b-tree.
CREATE INDEX products_by_category ON products(category, price_cents);
"""
# Deliberately missing: any index that could serve the search. The fix would be
# an FTS5 table (CREATE VIRTUAL TABLE ... USING fts5); `LIKE '%q%'` can never
# use a b-tree index, so every search reads all the products.

BRANDS = (
    "Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Hooli",
    "Vandelay", "Soylent", "Stark", "Wayne", "Tyrell", "Cyberdyne", "Wonka",
)  # fmt: skip
ADJECTIVES = (
    "compact", "deluxe", "rugged", "classic", "smart", "portable", "vintage",
    "ergonomic", "wireless", "foldable", "quiet", "heavy-duty", "eco", "pro",
    "mini", "ultra", "modular", "handmade", "premium", "budget",
)  # fmt: skip
MATERIALS = (
    "oak", "steel", "bamboo", "leather", "cotton", "glass", "copper", "walnut",
    "ceramic", "linen", "wool", "aluminium", "granite", "silk", "carbon",
)  # fmt: skip
NOUNS = (
    "lamp", "chair", "kettle", "backpack", "desk", "speaker", "blender", "jacket",
    "mug", "headphones", "bookshelf", "clock", "toaster", "umbrella", "wallet",
    "notebook", "pan", "rug", "drone", "keyboard", "bottle", "tent", "stool",
    "vase", "scarf", "camera", "mirror", "watch", "pillow", "grinder",
)  # fmt: skip
CATEGORIES = ("home", "kitchen", "outdoor", "office", "fashion", "electronics", "garden")
PHRASES = (
    "Built to last for years of daily use.",
    "Ships in recyclable packaging.",
    "A favourite of reviewers this season.",
    "Easy to clean and simple to store.",
    "Designed in-house and tested by our team.",
    "Comes with a two-year warranty.",
    "Pairs well with the rest of the collection.",
    "Lightweight without giving up strength.",
    "Available while stocks last.",
    "Assembled by hand in small batches.",
)
# What the load test searches for: words that occur in names and descriptions.
SEARCH_TERMS = (*MATERIALS, *NOUNS, "warranty", "reviewers", "batches")


def default_path() -> Path:
    """``$SHOP_DB``, else a cache file in the temp dir, shared by every run."""
    configured = os.environ.get("SHOP_DB")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"asgi-perf-shop-{DATA_VERSION}.sqlite3"


def default_product_count() -> int:
    raw = os.environ.get("SHOP_PRODUCTS", "")
    if not raw:
        return DEFAULT_PRODUCTS
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"SHOP_PRODUCTS must be a positive integer, got {raw!r}")
    return count


def username(n: int) -> str:
    """The n-th seeded account (1-based): ``shopper001`` ... ``shopper500``."""
    return f"shopper{n:03d}"


def password_for(name: str) -> str:
    """Every seeded account's password is its name backwards, e.g. ``100reppohs``.

    Derived rather than stored, so the load test and the tests know it.
    """
    return name[::-1]


def hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ITERATIONS)


def check_password(password: str, salt: bytes, expected: bytes) -> bool:
    # Constant-time, so the answer time does not leak how much of the hash matched.
    return hmac.compare_digest(hash_password(password, salt), expected)


def _products(count: int, rng: random.Random) -> Iterator[tuple[int, str, str, str, str, int]]:
    for pid in range(1, count + 1):
        material, noun = rng.choice(MATERIALS), rng.choice(NOUNS)
        name = f"{rng.choice(BRANDS)} {rng.choice(ADJECTIVES)} {material} {noun}"
        description = f"A {rng.choice(ADJECTIVES)} {noun} made of {material}. " + " ".join(
            rng.sample(PHRASES, 3)
        )
        price = rng.randrange(199, 49_999)
        yield pid, f"SKU-{pid:06d}", name, description, rng.choice(CATEGORIES), price


def _users(rng: random.Random) -> Iterator[tuple[int, str, bytes, bytes]]:
    for n in range(1, USERS + 1):
        name = username(n)
        salt = rng.randbytes(16)
        yield n, name, salt, hash_password(password_for(name), salt)


def _orders(
    products: int, rng: random.Random
) -> tuple[list[tuple[int, int, float, int]], list[tuple[int, int, int, int]]]:
    """Each account's past orders, and their lines at the price paid then."""
    orders: list[tuple[int, int, float, int]] = []
    lines: list[tuple[int, int, int, int]] = []
    for user_id in range(1, USERS + 1):
        placed = sorted(
            SEEDED_AT - rng.uniform(0, YEAR_S) for _ in range(rng.randint(*ORDERS_PER_USER))
        )
        for created_at in placed:
            order_id = len(orders) + 1
            total = 0
            count = min(products, rng.randint(*LINES_PER_ORDER))
            for product_id in sorted(rng.sample(range(1, products + 1), count)):
                quantity, price = rng.randint(1, 3), rng.randrange(199, 49_999)
                lines.append((order_id, product_id, quantity, price))
                total += quantity * price
            orders.append((order_id, user_id, round(created_at, 3), total))
    return orders, lines


def _is_current(path: Path, products: int) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error:
        return False
    return rows.get("version") == str(DATA_VERSION) and rows.get("products") == str(products)


@contextlib.contextmanager
def _seed_lock(path: Path) -> Iterator[None]:
    """Held while seeding, so one process seeds and the others wait and reuse.

    Without it, uvicorn workers starting together would each rename their own
    copy over the file, and a worker still holding an earlier copy open would
    write its sessions where the other workers never look.
    """
    if sys.platform == "win32":  # no fcntl; start one worker first there
        yield
        return
    import fcntl

    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_database(path: Path, products: int = DEFAULT_PRODUCTS) -> float:
    """Create and seed the database at ``path`` unless a current one is there.

    Returns the seconds spent seeding (0.0 when the file was reused). The file
    is built under a temporary name next to ``path`` and renamed over it, so a
    crash mid-seed never leaves a half-filled database behind.
    """
    if _is_current(path, products):
        return 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with _seed_lock(path):
        # Another process may have seeded it while this one waited.
        if _is_current(path, products):
            return 0.0
        started = time.perf_counter()
        _build(path, products)
        return time.perf_counter() - started


def _build(path: Path, products: int) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # Autocommit mode: the transaction below is spelled out, not implied.
        with contextlib.closing(sqlite3.connect(tmp, isolation_level=None)) as conn:
            # Nothing else sees the file until the rename: no journal needed.
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
            conn.executescript(SCHEMA)
            rng = random.Random(SEED)
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO products VALUES (?, ?, ?, ?, ?, ?)", _products(products, rng)
            )
            conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?)", _users(rng))
            # Its own generator: the products and accounts stay those of version 1.
            orders, lines = _orders(products, random.Random(SEED + 1))
            conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", orders)
            conn.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?)", lines)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("version", str(DATA_VERSION)), ("products", str(products))],
            )
            conn.execute("COMMIT")
            # The served database runs in WAL mode so readers never wait for
            # a writer; the mode is stored in the file.
            conn.execute("PRAGMA journal_mode = WAL")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Database:
    """One SQLite connection per thread, all closed together at shutdown.

    FastAPI runs the shop's ``def`` endpoints in a threadpool; a connection
    per thread means no locking around cursors, and SQLite itself (in WAL
    mode) lets the readers run in parallel while one writer commits.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so close() may close every thread's
            # connection from the shutdown thread; each is used by one thread.
            raw = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            raw.row_factory = sqlite3.Row
            raw.execute("PRAGMA foreign_keys = ON")
            # WAL needs no fsync per commit for a demo; a crash may lose the
            # last orders, never corrupt the file.
            raw.execute("PRAGMA synchronous = NORMAL")
            # From here every query is timed and counted for the request that
            # ran it (/_perf/db, routes[].db); the proxy behaves like the
            # connection. The set-up above is the thread's, not a request's.
            conn = instrument(raw)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front.

        ``BEGIN IMMEDIATE`` waits (up to the busy timeout) for the lock; a plain
        ``BEGIN`` that reads first and writes later could fail at once with
        "database is locked" when another writer committed in between.
        """
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for conn in connections:
            conn.close()
