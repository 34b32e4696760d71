"""What the Phase 1 cores hand back: datagrams, a timer deadline and typed events.

Every ``receive``/``handle_timer`` call returns one ``Output`` so a driver
needs no other query: send ``datagrams``, arm one timer at ``timer``
(``None``: nothing scheduled) and act on ``events``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .sa import Address, IkeSa


class FailureReason(enum.Enum):
    """Why Phase 1 did not complete; the CLI maps these to exit statuses."""

    AUTHENTICATION_FAILED = "authentication failed"
    NO_PROPOSAL_CHOSEN = "no proposal chosen"
    NO_RESPONSE = "no response"
    PEER_NOTIFY = "peer reported an error"
    INVALID_KEY_EXCHANGE = "invalid key exchange"
    PROTOCOL_ERROR = "protocol error"


class DeleteReason(enum.Enum):
    LOCAL = "deleted locally"
    PEER = "deleted by the peer"
    EXPIRED = "lifetime expired"
    DEAD_PEER = "peer stopped answering dead peer detection"


@dataclass(frozen=True, slots=True)
class IkeSaEstablished:
    sa: IkeSa


@dataclass(frozen=True, slots=True)
class IkeSaFailed:
    """Phase 1 with ``peer`` failed; ``message`` is the operator-facing sentence."""

    peer: Address
    reason: FailureReason
    message: str


@dataclass(frozen=True, slots=True)
class IkeSaDeleted:
    sa: IkeSa
    reason: DeleteReason


@dataclass(frozen=True, slots=True)
class NotifyReceived:
    """A notify the core does not act on itself; ``sa`` is None when it came in clear."""

    peer: Address
    notify_type: int
    data: bytes
    sa: IkeSa | None


@dataclass(frozen=True, slots=True)
class PeerAlive:
    """A DPD R-U-THERE-ACK matched our outstanding probe (RFC 3706 §5.4)."""

    sa: IkeSa
    sequence: int


Event = IkeSaEstablished | IkeSaFailed | IkeSaDeleted | NotifyReceived | PeerAlive


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes
    addr: Address


@dataclass(frozen=True, slots=True)
class Output:
    datagrams: tuple[Datagram, ...] = ()
    timer: float | None = None
    events: tuple[Event, ...] = ()


@dataclass
class Collector:
    """What one call into a core produced so far; ``output`` freezes it with the timer."""

    datagrams: list[Datagram] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def send(self, data: bytes, addr: Address) -> None:
        self.datagrams.append(Datagram(data, addr))

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def output(self, timer: float | None) -> Output:
        return Output(tuple(self.datagrams), timer, tuple(self.events))
