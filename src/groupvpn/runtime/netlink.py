"""Interface state from the kernel: an rtnetlink socket subscribed to link changes (RTMGRP_LINK).

A member registers a VPN while the interface its service set is applied
to is up, so it watches links: one dump of every link at start, then the
kernel's RTM_NEWLINK/RTM_DELLINK notifications.  A link counts as up when
it is administratively up (IFF_UP) and operationally running
(IFF_RUNNING: carrier present, e.g. the far end of a veth is up too).

Only ``struct nlmsghdr``, ``struct ifinfomsg`` and the IFLA_IFNAME
attribute are read (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h);
the numbers are Linux ABI, not a protocol registry, so they live here.
Netlink integers are in host byte order.  ``parse`` is pure; ``LinkWatcher``
feeds it from a non-blocking socket on the event loop, opened inside a
routing instance's namespace when one is named.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from .netns import socket_in

NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, device type, index, flags, change mask
RTATTR = struct.Struct("=HH")  # length, type
NLMSG_ERROR_CODE = struct.Struct("=i")
RTMGRP_LINK = 0x1
IFLA_IFNAME = 3
RECEIVE_SIZE = 1 << 16
_ALIGN = 4


class MessageType(IntEnum):
    NLMSG_NOOP = 1
    NLMSG_ERROR = 2
    NLMSG_DONE = 3
    RTM_NEWLINK = 16
    RTM_DELLINK = 17
    RTM_GETLINK = 18


class MessageFlags(IntFlag):
    NLM_F_REQUEST = 0x1
    NLM_F_MULTI = 0x2
    NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH


class LinkFlags(IntFlag):
    IFF_UP = 0x1
    IFF_LOOPBACK = 0x8
    IFF_RUNNING = 0x40
    IFF_LOWER_UP = 0x10000


class NetlinkError(OSError):
    """The kernel answered a request with an error, or sent what is not rtnetlink."""


def _aligned(length: int) -> int:
    return (length + _ALIGN - 1) & ~(_ALIGN - 1)


@dataclass(frozen=True, slots=True)
class Link:
    """One interface as the kernel reported it; ``present`` is False once it was deleted."""

    index: int
    name: str
    flags: LinkFlags
    present: bool = True

    @property
    def up(self) -> bool:
        return self.present and LinkFlags.IFF_UP in self.flags and LinkFlags.IFF_RUNNING in self.flags


def dump_request(sequence: int) -> bytes:
    """RTM_GETLINK with NLM_F_DUMP: every link of the namespace, answered as RTM_NEWLINK messages."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    flags = MessageFlags.NLM_F_REQUEST | MessageFlags.NLM_F_DUMP
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), MessageType.RTM_GETLINK, flags, sequence, 0) + body


def _name(attributes: bytes) -> str | None:
    pos = 0
    while pos + RTATTR.size <= len(attributes):
        length, kind = RTATTR.unpack_from(attributes, pos)
        if length < RTATTR.size or pos + length > len(attributes):
            raise NetlinkError(errno.EBADMSG, f"link attribute of length {length} at offset {pos} overruns its message")
        if kind == IFLA_IFNAME:
            return attributes[pos + RTATTR.size : pos + length].split(b"\0", 1)[0].decode("utf-8", "replace")
        pos += _aligned(length)
    return None


def parse(data: bytes) -> Iterator[Link]:
    """The links in one datagram from the socket (several netlink messages may share it).

    An error reply raises ``NetlinkError``; NOOP, DONE and other message
    types carry no link and are skipped.
    """
    pos = 0
    while pos + NLMSG_HEADER.size <= len(data):
        length, kind, _flags, _sequence, _port = NLMSG_HEADER.unpack_from(data, pos)
        if length < NLMSG_HEADER.size or pos + length > len(data):
            problem = f"netlink message of length {length} at offset {pos} overruns the datagram"
            raise NetlinkError(errno.EBADMSG, problem)
        body = data[pos + NLMSG_HEADER.size : pos + length]
        pos += _aligned(length)
        if kind == MessageType.NLMSG_ERROR:
            (code,) = NLMSG_ERROR_CODE.unpack_from(body)
            if code:
                raise NetlinkError(-code, f"rtnetlink request refused: {os.strerror(-code)}")
        elif kind in (MessageType.RTM_NEWLINK, MessageType.RTM_DELLINK):
            if len(body) < IFINFOMSG.size:
                raise NetlinkError(errno.EBADMSG, f"link message of {len(body)} octets is shorter than ifinfomsg")
            _family, _type, index, flags, _change = IFINFOMSG.unpack_from(body)
            name = _name(body[IFINFOMSG.size :])
            if name is not None:
                yield Link(index, name, LinkFlags(flags), present=kind == MessageType.RTM_NEWLINK)


class LinkWatcher:
    """Calls ``on_change`` with every link of a namespace at start, then with each change.

    Repeats are possible (the kernel reports other attribute changes too);
    callers act on transitions.  If the kernel drops notifications
    (ENOBUFS), the watcher asks for a full dump again, so the state
    converges.
    """

    def __init__(self, sock: socket.socket, on_change: Callable[[Link], None], namespace: str | None) -> None:
        self.namespace = namespace
        self._sock = sock
        self._on_change = on_change
        self._sequence = 0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self._dump()

    @classmethod
    async def open(cls, on_change: Callable[[Link], None], namespace: str | None = None) -> LinkWatcher:
        """Watch the links of ``namespace`` (a routing instance; None: the daemon's own namespace)."""
        if namespace is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        else:
            sock = socket_in(namespace, socket.AF_NETLINK, socket.SOCK_RAW)  # protocol 0 is NETLINK_ROUTE
        try:
            sock.bind((0, RTMGRP_LINK))
            sock.setblocking(False)
            return cls(sock, on_change, namespace)
        except BaseException:
            sock.close()
            raise

    def _dump(self) -> None:
        self._sequence += 1
        self._sock.send(dump_request(self._sequence))

    def _readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                self._dump()
                continue
            for link in parse(data):
                self._on_change(link)

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
