"""Sockets inside a named network namespace: how a Junos ``routing-instance`` maps onto Linux.

A routing instance is a network namespace created with ``ip netns add
NAME`` (``/run/netns/NAME``).  A socket belongs for life to the namespace
its creating thread was in, so ``socket_in`` creates it through
``dataplane.namespace.in_namespace`` and the daemon's own threads never move.
"""

from __future__ import annotations

import socket

from ..dataplane.namespace import NamespaceError, in_namespace

__all__ = ["NamespaceError", "socket_in"]


def socket_in(name: str, family: int, kind: int) -> socket.socket:
    """A new socket living in network namespace ``name``."""
    return in_namespace(name, lambda: socket.socket(family, kind))
