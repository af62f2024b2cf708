"""Windows across the workers of one server: one request, every worker profiled, one answer.

The worker that is asked writes ``windows/active.json`` (created only if
absent: one window at a time, server-wide). Every worker's poll thread sees
it, starts a window of its own (``Windows.start(part_of=...)``), and when
the window's end comes or ``<id>.stop`` appears, stops it and writes its
capture as ``<id>-<pid>.part.json``. The worker that collects (the one that
was asked for the file, or asked to stop) waits for the part of every live
worker, adds them up (``combine``) and stores the result under the
window's id.

Profiles kept by another worker are fetched through ``exports/``: the
asking worker writes ``<id>.want``; the worker that has the profile answers
with ``<id>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asgi_perf.capture import Capture, ProfileMeta, combine
from asgi_perf.storage import ProfileStore
from asgi_perf.storage.disk import atomic_write

# How long a collector waits past the window's end for the last parts.
PART_WAIT_S = 2.0
EXPORT_WAIT_S = 2.0
# A window file older than its end by this much was left by a crash.
_STALE_S = 30.0


class ServerWindowBusy(Exception):
    def __init__(self, active: dict[str, Any]) -> None:
        super().__init__(f"window {active.get('id')} is running")
        self.active = active


@dataclass
class Joined:
    """This worker's part in a server window."""

    window_id: str
    local_id: str
    ends_at: float


class ServerWindows:
    """Start, join, stop and collect windows that span every worker."""

    def __init__(
        self,
        directory: Path,
        store: ProfileStore,
        live_pids: Callable[[], list[int]],
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self.dir = directory / "windows"
        self.exports = directory / "exports"
        self._store = store
        self._live_pids = live_pids
        self._on_error = on_error
        self.joined: Joined | None = None

    # -- the asking worker

    def start(
        self,
        engine: str,
        seconds: float,
        *,
        tag: str | None,
        native: bool,
        pids: list[int] | None,
    ) -> dict[str, Any]:
        """Announce a window to every worker (or ``pids``); ServerWindowBusy if one runs."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        now = time.time()
        request = {
            "id": secrets.token_hex(8),
            "engine": engine,
            "tag": tag,
            "native": native,
            "started": now,
            "ends_at": now + seconds,
            "pids": pids,
            "initiator": os.getpid(),
        }
        active = self.dir / "active.json"
        stale = self.active()
        if stale is not None:
            raise ServerWindowBusy(stale)
        tmp = self.dir / f".{request['id']}.tmp"
        tmp.write_text(json.dumps(request))
        try:
            # link() fails when active.json exists: one window, server-wide.
            os.link(tmp, active)
        except FileExistsError:
            found = self.active()
            raise ServerWindowBusy(found or {"id": "?"}) from None
        finally:
            tmp.unlink(missing_ok=True)
        return request

    def active(self) -> dict[str, Any] | None:
        """The running server window, if any (a stale one is cleared)."""
        path = self.dir / "active.json"
        try:
            found = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(found, dict):
            return None
        if time.time() > float(found.get("ends_at", 0)) + _STALE_S:
            path.unlink(missing_ok=True)
            return None
        return found

    def request_stop(self, window_id: str) -> None:
        (self.dir / f"{window_id}.stop").touch()

    async def collect(
        self, request: dict[str, Any], timeout_s: float = PART_WAIT_S
    ) -> tuple[ProfileMeta, Capture]:
        """Wait for every live worker's part, add them up and store the sum."""
        window_id = str(request["id"])
        wanted = set(request.get("pids") or self._live_pids())
        deadline = max(time.time(), float(request["ends_at"])) + timeout_s
        while True:
            parts = self._parts(window_id)
            if wanted <= set(parts) or time.time() > deadline:
                break
            await asyncio.sleep(0.02)
        captures = [c for c in parts.values() if c is not None]
        if not captures:
            self._clear(window_id)  # nothing to wait for: the next window may start
            raise RuntimeError(f"no worker wrote a part of window {window_id}")
        merged = combine(captures)
        ended = time.time()
        merged.meta.update(
            {
                "id": window_id,
                "kind": "window",
                "engine": str(request["engine"]),
                "route": "<process>",
                "method": "WINDOW",
                "status": None,
                "duration_ms": round(
                    (min(ended, request["ends_at"]) - request["started"]) * 1000, 3
                ),
                "start": float(request["started"]),
                "pid": os.getpid(),
                "tag": request.get("tag"),
                "workers": sorted(parts),
            }
        )
        merged.duration_s = max(c.duration_s for c in captures)
        stored = self._store.add(merged, keep=True)
        self._clear(window_id)
        if stored is None:
            return {**merged.meta, "stored": False}, merged
        return {**self._store.meta(stored), "stored": True}, merged

    def abort(self, window_id: str) -> None:
        self.request_stop(window_id)
        self._clear(window_id)

    def _parts(self, window_id: str) -> dict[int, Capture | None]:
        out: dict[int, Capture | None] = {}
        for path in self.dir.glob(f"{window_id}-*.part.json"):
            try:
                body = json.loads(path.read_bytes())
                pid = int(body["pid"])
                out[pid] = Capture.from_json(body["capture"]) if body.get("capture") else None
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def _clear(self, window_id: str) -> None:
        active = self.active()
        if active is not None and active.get("id") == window_id:
            (self.dir / "active.json").unlink(missing_ok=True)
        for path in self.dir.glob(f"{window_id}*"):
            with contextlib.suppress(OSError):
                path.unlink()

    # -- every worker (the poll thread)

    def poll(
        self,
        join: Callable[[dict[str, Any]], str | None],
        leave: Callable[[str], Capture | None],
    ) -> None:
        """Join a new window, or leave the one joined when it ends or is stopped."""
        joined = self.joined
        if joined is None:
            active = self.active()
            if active is None or active.get("id") == getattr(self, "_last_id", None):
                return
            self._last_id = active.get("id")
            pids = active.get("pids")
            if pids and os.getpid() not in pids:
                return
            if time.time() >= float(active["ends_at"]):
                return
            local_id = join(active)
            if local_id is None:
                self._write_part(str(active["id"]), None, "could not start here")
                return
            self.joined = Joined(str(active["id"]), local_id, float(active["ends_at"]))
            return
        stopping = (self.dir / f"{joined.window_id}.stop").exists()
        if stopping or time.time() >= joined.ends_at:
            self.joined = None
            capture = leave(joined.local_id)
            self._write_part(joined.window_id, capture, None if capture else "no capture")

    def _write_part(self, window_id: str, capture: Capture | None, why: str | None) -> None:
        body = {
            "pid": os.getpid(),
            "capture": None if capture is None else capture.to_json(),
            "why": why,
        }
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.dir / f"{window_id}-{os.getpid()}.part.json", json.dumps(body).encode())

    # -- profiles kept by another worker

    async def fetch(self, profile_id: str) -> Capture | None:
        """A profile another worker keeps, asked for through ``exports/``."""
        self.exports.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.exports / f"{profile_id}.want").touch()
        answer = self.exports / f"{profile_id}.json"
        deadline = time.monotonic() + EXPORT_WAIT_S
        while time.monotonic() < deadline:
            try:
                capture = Capture.from_json(json.loads(answer.read_bytes()))
            except (OSError, ValueError, KeyError):
                await asyncio.sleep(0.02)
                continue
            answer.unlink(missing_ok=True)
            return capture
        (self.exports / f"{profile_id}.want").unlink(missing_ok=True)
        return None

    def serve_exports(self) -> None:
        """Answer the wants for profiles this worker keeps (the poll thread)."""
        if not self.exports.is_dir():
            return
        for want in self.exports.glob("*.want"):
            profile_id = want.name[: -len(".want")]
            try:
                capture = self._store.get(profile_id)
            except KeyError:
                continue  # another worker's
            with contextlib.suppress(OSError):
                want.unlink()
            atomic_write(
                self.exports / f"{profile_id}.json", json.dumps(capture.to_json()).encode()
            )
