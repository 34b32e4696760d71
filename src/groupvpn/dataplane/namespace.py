"""Doing things inside a network namespace without moving the caller.

TUN devices, sockets and sysctls belong to the namespace of the thread that
creates or writes them, so ``in_namespace`` runs a function on a short-lived
thread that has entered the namespace with setns(2) (Python 3.11 has no
``os.setns``); the daemon's own threads never move.  ``None`` means the
caller's own namespace, for a member that already runs inside its lab
namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """The namespace does not exist or cannot be entered."""


def in_namespace(namespace: str | None, action: Callable[[], T]) -> T:
    """``action()`` run inside network namespace ``namespace`` (``ip netns`` name); its exception propagates."""
    if namespace is None:
        return action()
    if not namespace or "/" in namespace or namespace in (".", ".."):
        raise NamespaceError(f"{namespace!r} is not a network namespace name")
    path = NETNS_DIR / namespace
    outcome: list[tuple[bool, object]] = []

    def enter_and_run() -> None:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            hint = f" (ip netns add {namespace})" if isinstance(err, FileNotFoundError) else ""
            problem = NamespaceError(f"network namespace {namespace}: cannot open {path}: {err.strerror}{hint}")
            outcome.append((False, problem))
            return
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise NamespaceError(f"network namespace {namespace}: cannot enter {path}: {os.strerror(err)}")
            outcome.append((True, action()))
        except BaseException as problem:  # handed to the caller's thread
            outcome.append((False, problem))
        finally:
            os.close(target)

    # The thread ends right after, taking its namespace with it.
    thread = threading.Thread(target=enter_and_run, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    ((succeeded, value),) = outcome
    if not succeeded:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


def write_sysctl(path: tuple[str, ...], value: int) -> None:
    """Set the sysctl at ``path`` (e.g. ``("net", "ipv4", "conf", "gv0o", "rp_filter")``) in this thread's namespace.

    A path rather than a dotted key, because interface names may contain dots.
    """
    Path("/proc/sys", *path).write_text(f"{value}\n")


def read_sysctl(path: tuple[str, ...]) -> int:
    return int(Path("/proc/sys", *path).read_text())
