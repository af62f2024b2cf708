# Parts of Locust's API (interrupt, LoadTestShape) carry no annotations.
# mypy: disable-error-code="no-untyped-call"
"""Load test for the shop: a checkout flow under a peak-hour load shape.

From the repository root, with the shop served on port 8000::

    locust -f examples/shop/locustfile.py --host http://127.0.0.1:8000            # web UI
    locust -f examples/shop/locustfile.py --host http://127.0.0.1:8000 --headless  # no UI

The import of ``asgi_perf.integrations.locust`` attaches asgi_perf to the run:
it resets the app's numbers and starts a profile window when the test
starts, tags every request with the run id, and when the test stops saves
the profile (``.prof``, ``.svg``) and the stats under ``perf-results/<run-id>/``,
prints the budget verdicts and makes Locust exit 1 if a budget broke. It adds
``--perf-results``, ``--perf-token``, ``--perf-engine``, ``--perf-budgets``
and ``--no-perf-window``. The shop's endpoints are ``def`` functions that run
in a threadpool, so pass ``--perf-engine yappi``: a pyinstrument window sees
only the event-loop thread.

The shape runs about 30 s. ``SHOP_LOAD_SCALE=10`` stretches every stage ten
times (about 5 minutes); ``-t``/``--run-time`` cuts the shape short.
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass
from typing import Any

from locust import HttpUser, LoadTestShape, SequentialTaskSet, between, task

import asgi_perf.integrations.locust  # noqa: F401

# Must match the shop's seed (examples/shop/db.py): accounts shopper001 ...
# shopper500, each with its name reversed as password.
ACCOUNTS = 500
# Each Locust process takes its accounts from its own block, so two simulated
# shoppers never share a cart (one's checkout would empty the other's) unless
# a process runs more than this many users at once.
ACCOUNTS_PER_PROCESS = 100
SEARCHES = (
    "oak", "lamp", "walnut desk", "steel", "kettle", "wireless", "leather jacket",
    "warranty", "handmade", "granite clock", "drone", "bamboo", "ceramic vase",
    "espresso",  # no such product: the search still reads the whole catalog
)  # fmt: skip
_account_numbers = itertools.count()


def _scale() -> float:
    raw = os.environ.get("SHOP_LOAD_SCALE", "")
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not 0 < scale <= 1000:
        raise ValueError(f"SHOP_LOAD_SCALE must be a number above 0 (1 = 30 s), got {raw!r}")
    return scale


class CheckoutFlow(SequentialTaskSet):
    """One visit: log in, browse, look at the categories, search, look at a
    product, buy it, look at the order history. Then again."""

    product_id = 1
    total_products = 1

    @property
    def shopper(self) -> ShopUser:
        # Locust types TaskSet.user as the base User class.
        assert isinstance(self.user, ShopUser)
        return self.user

    @task
    def log_in(self) -> None:
        # A fresh session per visit; the token goes on this user's requests only.
        self.client.headers.pop("Authorization", None)
        account = self.shopper.account
        response = self.client.post("/login", json={"username": account, "password": account[::-1]})
        if response.status_code != 200:
            # Locust has counted the failure; every later step needs the token,
            # so start the visit over.
            self.interrupt(reschedule=True)
        self.client.headers["Authorization"] = f"Bearer {response.json()['token']}"

    @task
    def browse(self) -> None:
        # Most shoppers stay on the first pages; a few wander deep into the catalog.
        page = random.choice((1, 1, 1, 2, 2, 3, 5, 10, random.randint(1, 500)))
        response = self.client.get(f"/products?page={page}&size=20", name="/products?page=[n]")
        if response.ok:
            self.total_products = int(response.json()["total"])

    @task
    def categories(self) -> None:
        # The catalog's aggregation: a GROUP BY over every product.
        self.client.get("/products/categories")

    @task
    def search(self) -> None:
        response = self.client.get(
            "/products/search", params={"q": random.choice(SEARCHES)}, name="/products/search?q="
        )
        items = response.json()["items"] if response.ok else []
        if items:
            self.product_id = int(random.choice(items)["id"])
        else:
            self.product_id = random.randint(1, max(1, self.total_products))

    @task
    def view_product(self) -> None:
        self.client.get(f"/products/{self.product_id}", name="/products/{product_id}")

    @task
    def add_to_cart(self) -> None:
        self.client.post(
            "/cart/items", json={"product_id": self.product_id, "quantity": random.randint(1, 3)}
        )

    @task
    def view_cart(self) -> None:
        self.client.get("/cart")

    @task
    def checkout(self) -> None:
        self.client.post("/checkout")

    @task
    def order_history(self) -> None:
        # The shop's N+1 (one query per past order): /_perf/db names the line.
        self.client.get("/api/orders")


class ShopUser(HttpUser):
    tasks = [CheckoutFlow]  # noqa: RUF012 - Locust's own spelling, read once per class
    # Think time between the steps of a visit: short, so a 30 s run still
    # gives every route hundreds of requests.
    wait_time = between(0.05, 0.2)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        worker = getattr(self.environment.runner, "worker_index", 0) or 0
        slot = worker * ACCOUNTS_PER_PROCESS + next(_account_numbers) % ACCOUNTS_PER_PROCESS
        self.account = f"shopper{slot % ACCOUNTS + 1:03d}"


@dataclass(frozen=True)
class Stage:
    seconds: float
    users: int
    spawn_rate: float


class PeakHour(LoadTestShape):
    """Quiet, ramp up, peak, wind down; then the run stops by itself.

    The users are the same at any scale; ``SHOP_LOAD_SCALE`` stretches time.
    """

    # So that -t/--run-time reaches tick() (as a hard cap) instead of being
    # ignored with a warning; -u and -r are still ignored: the stages decide.
    use_common_options = True

    STAGES = (
        Stage(5, users=4, spawn_rate=2),  # early: a few shoppers
        Stage(7, users=16, spawn_rate=4),  # the rush starts
        Stage(12, users=16, spawn_rate=4),  # peak hour
        Stage(6, users=4, spawn_rate=4),  # winding down
    )

    def __init__(self) -> None:
        super().__init__()
        self.scale = _scale()

    def tick(self) -> tuple[int, float] | None:
        run_time = self.get_run_time()
        options = self.runner.environment.parsed_options if self.runner else None
        cap = getattr(options, "run_time", None)
        if cap and run_time >= cap:
            return None
        end = 0.0
        for stage in self.STAGES:
            end += stage.seconds * self.scale
            if run_time < end:
                return stage.users, stage.spawn_rate
        return None
