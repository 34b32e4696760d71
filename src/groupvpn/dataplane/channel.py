"""The manager <-> worker channel: what crosses it and how.

One ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair per worker: message
boundaries are kept by the kernel, both ends can be non-blocking, and the
manager's end works with ``loop.add_reader``.  Each message is one pickled
frozen dataclass; both ends are processes of this program, so the pickle
never crosses a trust boundary.

Manager -> worker: ``WorkerSetup`` (first, once), then any number of
``PolicyState`` (each replaces the whole policy) and ``ReportRequest``.
Closing the manager's end tells the worker to exit.
Worker -> manager: ``Ready`` once, ``Report`` periodically and on request,
``Rejected`` when a policy could not be applied (the old one stays).
"""

from __future__ import annotations

import array
import pickle
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from types import MappingProxyType

from ..wire.numbers import PolicyAction
from .esp_path import SaConfig
from .spd import FailOpenRule, FilterTerm, Rule, SpdError

MAX_MESSAGE = 4 << 20
BUFFER_SIZE = 8 << 20  # SO_SNDBUF/SO_RCVBUF: a burst of reports or a large policy never blocks a sender
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33


class ChannelError(RuntimeError):
    """A message that cannot be sent (too large, peer not reading) or a peer that went away."""


@dataclass(frozen=True, slots=True)
class PolicyState:
    """Everything a worker needs to protect and accept traffic at one moment; replaces the previous one whole.

    ``rules`` are the group's policy in order; ``sas`` every live SA (all of
    them decrypt: old and new TEKs during a rekey); ``encrypting`` maps a
    permit rule's name to the SPI of the SA that encrypts its traffic (a
    permit rule without an entry drops its traffic, unless fail-open lets it
    pass); ``fail_open`` is raised while the group has no key server.
    ``version`` grows with every change so reports can say what they count under.
    """

    version: int
    rules: tuple[Rule, ...] = ()
    sas: tuple[SaConfig, ...] = ()
    encrypting: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    fail_open: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "encrypting", MappingProxyType(dict(self.encrypting)))
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise SpdError(f"rule names must be unique: {names}")
        spis = [sa.spi for sa in self.sas]
        if len(set(spis)) != len(spis):
            raise SpdError("an SPI is listed twice among the SAs")
        permits = {rule.name for rule in self.rules if rule.action == PolicyAction.PERMIT}
        for name, spi in self.encrypting.items():
            if name not in permits:
                raise SpdError(f"{name!r} is not a permit rule of this policy")
            if spi not in spis:
                raise SpdError(f"rule {name!r} encrypts with SPI {spi:#010x}, which is not among the SAs")

    def __reduce__(self) -> tuple[object, ...]:  # MappingProxyType does not pickle
        return PolicyState, (self.version, self.rules, self.sas, dict(self.encrypting), self.fail_open)


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What never changes for a worker's life: its place among the workers and the static policy parts."""

    index: int
    workers: int
    mtu: int  # the WAN MTU encapsulated packets must fit, and the TUN read size
    bypass: tuple[FilterTerm, ...] = ()  # in order, before the group's rules (``Spd``)
    fail_open_rules: tuple[FailOpenRule, ...] = ()
    icmp_source_v4: IPv4Address | None = None
    icmp_source_v6: IPv6Address | None = None
    batch: int = 64  # packets read from one TUN queue per wake-up at most
    report_interval: float = 1.0
    cpu: int | None = None  # pin the worker to this CPU
    offload: bool = False  # the inbound queue is IFF_VNET_HDR: decrypted TCP segments are written joined


@dataclass(frozen=True, slots=True)
class ReportRequest:
    serial: int


class Counter(IntEnum):
    """The worker's packet counters; the values index ``Report.counters``."""

    OUTBOUND_PACKETS = 0  # read from the outbound TUN (traffic from the LAN side)
    OUTBOUND_BYTES = 1
    ENCRYPTED_PACKETS = 2  # ESP packets written back (pre-fragmentation can make several of one)
    ENCRYPTED_BYTES = 3  # inner octets protected
    CLEAR_PACKETS = 4  # passed in clear: bypass, deny rules, fail-open
    INBOUND_PACKETS = 5  # read from the inbound TUN (ESP and its fragments from the WAN side)
    INBOUND_BYTES = 6
    DECRYPTED_PACKETS = 7
    DECRYPTED_BYTES = 8  # inner octets delivered
    WRITE_ERRORS = 9  # the TUN refused a written packet


@dataclass(frozen=True, slots=True)
class Ready:
    index: int


@dataclass(frozen=True, slots=True)
class Report:
    """One worker's totals since it started; ``serial`` answers a ReportRequest (0: periodic)."""

    index: int
    serial: int
    version: int  # the PolicyState version in force (-1: none yet)
    counters: tuple[int, ...]
    drops: tuple[int, ...]  # DropCounters.counts


@dataclass(frozen=True, slots=True)
class Rejected:
    index: int
    version: int
    problem: str


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(manager end, worker end), large buffers, both non-blocking (neither side may stall on the other)."""
    ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in ends:
        for force, plain in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF), (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                end.setsockopt(socket.SOL_SOCKET, force, BUFFER_SIZE)
            except PermissionError:
                end.setsockopt(socket.SOL_SOCKET, plain, BUFFER_SIZE)
        end.setblocking(False)
    return ends


def encode(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_MESSAGE:
        raise ChannelError(f"{type(message).__name__} of {len(data)} octets exceeds the channel's {MAX_MESSAGE}")
    return data


def send(end: socket.socket, data: bytes) -> bool:
    """Send one encoded message; False if the peer's buffer is full (non-blocking end)."""
    try:
        end.send(data)
    except BlockingIOError:
        return False
    except OSError as err:
        raise ChannelError(f"channel closed: {err.strerror}") from err
    return True


_PEEK = array.array("B", bytes(1))


def receive(end: socket.socket) -> object | None:
    """The next message; None when none is waiting (non-blocking end).  EOFError once the peer has closed."""
    try:
        size = end.recv_into(_PEEK, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
    except BlockingIOError:
        return None
    except ConnectionResetError:  # closed with our messages unread
        size = 0
    if size == 0:
        raise EOFError("the other end closed the channel")
    return pickle.loads(end.recv(size))
