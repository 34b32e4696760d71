"""An established IKE SA at run time: informationals, dead peer detection, lifetime.

Initiator and responder keep one ``Session`` per IKE SA they completed.
It answers what arrives under the SA (R-U-THERE, deletes, notifies, a
retransmitted message 5), probes the peer when DPD is on, and ends the SA
at its lifetime with a delete so the peer does not keep a stale one.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from ..crypto.errors import CryptoError
from ..wire.errors import WireError
from ..wire.isakmp import Delete, Notify
from ..wire.message import Message
from ..wire.numbers import ExchangeType, NotifyType, ProtocolId
from .events import Collector, DeleteReason, IkeSaDeleted, NotifyReceived, PeerAlive
from .informational import DPD_SEQUENCE_SIZE, InformationalError, delete_sa, notify, open_protected, protected, r_u_there
from .mainmode import Rng
from .retransmit import RetransmitPolicy
from .sa import IkeSa

# A Message ID of 0 belongs to Phase 1; informationals need a fresh non-zero one (RFC 2408 §3.1).
_MID_ATTEMPTS = 64


@dataclass
class _Probe:
    sequence: int
    sent: int
    deadline: float


@dataclass
class Session:
    """One established SA; ``closed`` once it was deleted, expired or its peer died."""

    sa: IkeSa
    rng: Rng
    stats: collections.Counter[str]
    dpd_policy: RetransmitPolicy = field(default_factory=RetransmitPolicy)
    dpd_idle: float | None = None
    # The peer's last Main Mode message and our reply, to answer its retransmission.
    final_exchange: tuple[bytes, bytes] | None = None
    last_heard: float = 0.0
    closed: bool = False
    _seen_mids: set[int] = field(default_factory=set)
    _sequence: int | None = None
    _probe: _Probe | None = None

    def message_id(self) -> int:
        """A random non-zero M-ID not used under this SA yet."""
        for _ in range(_MID_ATTEMPTS):
            mid = int.from_bytes(self.rng(4), "big")
            if mid and mid not in self._seen_mids:
                self._seen_mids.add(mid)
                return mid
        raise RuntimeError("random source keeps repeating Message IDs")

    def send(self, out: Collector, payload: Notify | Delete) -> None:
        out.send(protected(self.sa, payload, self.message_id()), self.sa.peer)

    def delete(self, out: Collector, reason: DeleteReason) -> None:
        """Tell the peer and end the SA."""
        if self.closed:
            return
        self.send(out, delete_sa(self.sa))
        self._close(out, reason)

    def probe(self, out: Collector, now: float) -> None:
        """Send an R-U-THERE now (RFC 3706 §5.3); a missing ACK is retried per ``dpd_policy``."""
        if self._sequence is None:  # RFC 3706 §5.5: start from a random value
            self._sequence = int.from_bytes(self.rng(DPD_SEQUENCE_SIZE), "big") & 0x7FFFFFFF
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        sent = self._probe.sent + 1 if self._probe else 1
        self._probe = _Probe(self._sequence, sent, now + self.dpd_policy.wait_after(sent))
        self.send(out, r_u_there(self.sa, self._sequence))

    def deadline(self) -> float | None:
        if self.closed:
            return None
        times = [self.sa.expires_at]
        if self._probe is not None:
            times.append(self._probe.deadline)
        elif self.dpd_idle is not None and self.sa.peer_supports_dpd:
            times.append(self.last_heard + self.dpd_idle)
        return min(times)

    def handle_timer(self, out: Collector, now: float) -> None:
        if self.closed:
            return
        if self.sa.expired(now):
            self.delete(out, DeleteReason.EXPIRED)
        elif self._probe is not None and now >= self._probe.deadline:
            if self._probe.sent >= self.dpd_policy.attempts:
                self._close(out, DeleteReason.DEAD_PEER)
            else:
                self.probe(out, now)
        elif (
            self._probe is None
            and self.dpd_idle is not None
            and self.sa.peer_supports_dpd
            and now >= self.last_heard + self.dpd_idle
        ):
            self.probe(out, now)

    def receive(self, out: Collector, message: Message, datagram: bytes, now: float) -> None:
        """A message carrying this SA's cookies."""
        if self.closed:
            self.stats["sa closed"] += 1
            return
        exchange = message.header.exchange
        if exchange == ExchangeType.IDENTITY_PROTECTION:
            if self.final_exchange is not None and datagram == self.final_exchange[0]:
                self.stats["duplicate"] += 1
                out.send(self.final_exchange[1], self.sa.peer)
            else:
                self.stats["unexpected main mode"] += 1
            return
        if exchange != ExchangeType.INFORMATIONAL:
            # Quick Mode and anything else under this SA is not ours to run.
            self.stats["unsupported exchange"] += 1
            self.send(out, notify(self.sa, NotifyType.INVALID_EXCHANGE_TYPE))
            return
        if not message.encrypted:
            self.stats["unprotected informational"] += 1
            return
        if message.header.message_id in self._seen_mids:
            self.stats["replayed informational"] += 1
            return
        try:
            info = open_protected(self.sa, message)
        except (InformationalError, WireError, CryptoError):
            self.stats["bad informational"] += 1
            return
        self._seen_mids.add(info.message_id)
        self.last_heard = now
        for item in info.notifies:
            self._notify(out, item)
        for item in info.deletes:
            if item.protocol == ProtocolId.ISAKMP and self.sa.cookies in item.spis:
                self._close(out, DeleteReason.PEER)
            else:
                self.stats["ignored delete"] += 1

    def _notify(self, out: Collector, item: Notify) -> None:
        sequence = int.from_bytes(item.data, "big") if len(item.data) == DPD_SEQUENCE_SIZE else None
        if item.notify_type == NotifyType.R_U_THERE and sequence is not None:
            self.send(out, r_u_there(self.sa, sequence, ack=True))
        elif item.notify_type == NotifyType.R_U_THERE_ACK and sequence is not None:
            if self._probe is not None and sequence == self._probe.sequence:
                self._probe = None
                out.emit(PeerAlive(self.sa, sequence))
            else:
                self.stats["stale dpd ack"] += 1
        else:
            out.emit(NotifyReceived(self.sa.peer, item.notify_type, item.data, self.sa))

    def _close(self, out: Collector, reason: DeleteReason) -> None:
        self.closed = True
        self._probe = None
        out.emit(IkeSaDeleted(self.sa, reason))
