"""The daemons' control socket: one JSON request and one JSON reply per line.

A daemon serves a Unix socket (mode 0600: it can reveal keys with
``show_keys``); operational commands (`groupvpn show|clear|request`) are
clients.  Requests are ``{"op": ..., "topic": ..., ...}``; replies are
``{"ok": true, "data": ...}`` or ``{"ok": false, "error": "..."}``.  The
daemon's handler never sees the socket and a failing handler never takes the
daemon down: its exception becomes an error reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Request = dict[str, Any]
Handler = Callable[[Request], Awaitable[Any]]

MAX_REQUEST = 64 * 1024
DEFAULT_DIR = Path("/run/groupvpn")


class ControlError(Exception):
    """A request the daemon refused, or no daemon to ask."""


class ControlServer:
    """Serves ``handler`` on a Unix socket at ``path``."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply = await self._answer(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.warning("control socket: dropped a client: %s", exc)
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": "request needs an 'op'"}
        try:
            return {"ok": True, "data": await self._handler(request)}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception:  # a bug in one command must not stop the daemon
            log.exception("control request %s failed", request.get("op"))
            return {"ok": False, "error": "internal error (see the daemon's log)"}


def call(path: Path, request: Request, timeout: float = 5.0) -> Any:
    """Send one request to the daemon at ``path`` and return its data (blocking)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except FileNotFoundError:
        raise ControlError(f"no daemon is listening on {path} (is it running?)") from None
    except OSError as exc:
        raise ControlError(f"cannot reach the daemon on {path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"the daemon on {path} sent an unreadable reply") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "request failed"))
    return reply.get("data")
