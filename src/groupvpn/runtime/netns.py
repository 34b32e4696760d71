"""Sockets inside a named network namespace: how a Junos ``routing-instance`` maps onto Linux.

A routing instance is a network namespace created with ``ip netns add
NAME`` (``/run/netns/NAME``).  A socket belongs for life to the namespace
its creating thread was in, so ``socket_in`` creates it on a short-lived
thread that has entered the namespace with setns(2) -- Python 3.11 has no
``os.setns``, hence ctypes -- and the daemon's own threads never move.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from pathlib import Path

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """The routing instance's namespace does not exist or cannot be entered."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def namespace_path(name: str) -> Path:
    """Where ``ip netns`` keeps the namespace ``name``; names are single path components."""
    if not name or "/" in name or name in (".", ".."):
        raise NamespaceError(f"{name!r} is not a network namespace name")
    return NETNS_DIR / name


def socket_in(name: str, family: int, kind: int) -> socket.socket:
    """A new socket living in network namespace ``name``."""
    path = namespace_path(name)
    result: list[socket.socket | BaseException] = []

    def create() -> None:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            result.append(NamespaceError(f"routing instance {name}: no network namespace {path} (ip netns add {name})"))
            return
        except OSError as err:
            result.append(NamespaceError(f"routing instance {name}: cannot open {path}: {err.strerror}"))
            return
        try:
            _setns(target)
            result.append(socket.socket(family, kind))
        except OSError as err:
            result.append(NamespaceError(f"routing instance {name}: cannot enter {path}: {err.strerror}"))
        finally:
            os.close(target)

    # The thread ends right after, taking its namespace with it.
    thread = threading.Thread(target=create, name=f"netns-{name}")
    thread.start()
    thread.join()
    (outcome,) = result
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
