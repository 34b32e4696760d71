"""A GROUPKEY-PULL between a PullInitiator and a PullResponder over a real IKE SA, driven by hand.

The IKE SAs come from a real in-memory Main Mode (tests/ike/phase1_link),
so the PULL runs on exactly the keys and CBC state Phase 1 leaves.
Randomness is seeded and time only moves when a test passes ``now``.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from gdoi_support import GROUP
from groupvpn.crypto.gdoi import pull_hash1, pull_hash2, pull_hash3, pull_hash4
from groupvpn.gdoi import (
    Offer,
    Peer,
    PullEvent,
    PullInitiator,
    PullOutput,
    PullResponder,
    Refusal,
    SenderIds,
)
from groupvpn.ike.sa import CbcChain, IkeSa
from groupvpn.wire.isakmp import Hash
from groupvpn.wire.message import Payload, decode_message, encode_each
from groupvpn.wire.numbers import ExchangeType, NotifyType, PayloadType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ike"))
from phase1_link import DEFAULT_SUITE, SeededRng, established  # noqa: E402

PULL_MID = 0x0BADCAFE


@cache
def ike_sas(suite: str = DEFAULT_SUITE) -> tuple[IkeSa, IkeSa]:
    """(member side, key server side) of one real Main Mode; immutable, so shared by all tests."""
    link = established((suite,), (suite,))
    member = link.initiator.sa
    (server,) = [e.sa for e in link.events["R"]]  # type: ignore[union-attr]
    assert member is not None
    return member, server


@dataclass
class Directory:
    """A ``GroupDirectory`` that records every call, to show when group state may change."""

    offers: dict[int, Offer]
    authorized: frozenset[str] | None = None
    sid_bits: int = 16
    calls: list[tuple[str, int, object]] = field(default_factory=list)
    next_sid: int = 0

    def lookup(self, group_id: int, peer: Peer) -> Offer | Refusal:
        self.calls.append(("lookup", group_id, peer.address[0]))
        if group_id not in self.offers:
            return Refusal(NotifyType.INVALID_ID_INFORMATION, f"group {group_id} is not configured")
        if self.authorized is not None and peer.address[0] not in self.authorized:
            reason = f"{peer.address[0]} is not authorized for group {group_id}"
            return Refusal(NotifyType.AUTHENTICATION_FAILED, reason)
        return self.offers[group_id]

    def allocate_sender_ids(self, group_id: int, peer: Peer, count: int) -> SenderIds | Refusal:
        self.calls.append(("allocate", group_id, count))
        values = tuple(range(self.next_sid, self.next_sid + count))
        self.next_sid += count
        return SenderIds(self.sid_bits, values)


Drop = Callable[[str, bytes], bool]


@dataclass
class PullLink:
    """``GM`` is the member side, ``KS`` the key server side.

    The responder is created on the first datagram, as a key server
    driver would.
    """

    member: PullInitiator
    directory: Directory
    server_sa: IkeSa
    server: PullResponder | None = None
    in_flight: deque[tuple[str, bytes]] = field(default_factory=deque)
    sent: dict[str, list[bytes]] = field(default_factory=lambda: {"GM": [], "KS": []})
    events: dict[str, list[PullEvent]] = field(default_factory=lambda: {"GM": [], "KS": []})

    @classmethod
    def make(
        cls, directory: Directory, group_id: int = GROUP, suite: str = DEFAULT_SUITE, **kwargs: object
    ) -> PullLink:
        kwargs.setdefault("rng", SeededRng("member pull"))
        member_sa, server_sa = ike_sas(suite)
        member = PullInitiator(member_sa, group_id, PULL_MID, **kwargs)  # type: ignore[arg-type]
        return cls(member, directory, server_sa)

    def take(self, side: str, out: PullOutput) -> PullOutput:
        self.events[side] += out.events
        for datagram in out.datagrams:
            self.sent[side].append(datagram)
            self.in_flight.append(("KS" if side == "GM" else "GM", datagram))
        return out

    def start(self, now: float = 0.0) -> PullLink:
        self.take("GM", PullOutput((self.member.start(now),)))
        return self

    def to_server(self, datagram: bytes, now: float = 0.0) -> PullOutput:
        if self.server is None:
            self.server = PullResponder(self.server_sa, PULL_MID, self.directory, rng=SeededRng("ks pull"))
        return self.take("KS", self.server.receive(datagram, now))

    def deliver(self, now: float = 0.0, drop: Drop | None = None) -> PullLink:
        """Hand over everything in flight, and what that triggers, until the link is quiet."""
        for _ in range(50):
            if not self.in_flight:
                return self
            to, data = self.in_flight.popleft()
            if drop is not None and drop(to, data):
                continue
            if to == "KS":
                self.to_server(data, now)
            else:
                self.take("GM", self.member.receive(data, now))
        raise AssertionError("link never went quiet")

    def tick(self, now: float) -> PullOutput:
        return self.take("GM", self.member.handle_timer(now))

    def kinds(self, side: str) -> list[str]:
        return [type(e).__name__ for e in self.events[side]]


class PeerView:
    """One side's copy of a PULL's CBC chain, to read and forge messages with that side's keys.

    An independent rendering of RFC 6407 §3.2: it decrypts what was sent
    and builds messages whose HASH comes straight from ``crypto.gdoi``.
    """

    def __init__(self, sa: IkeSa) -> None:
        self.sa = sa
        self.chain = sa.exchange(PULL_MID)

    def read(self, datagram: bytes) -> tuple[Payload, ...]:
        """Decrypt the next message of the exchange and move the chain past it."""
        message = decode_message(datagram)
        assert message.header.exchange == ExchangeType.GROUPKEY_PULL and message.header.message_id == PULL_MID
        payloads = self.chain.open(message)
        self.chain.advance(message)
        return payloads

    def expected_hash(self, step: int, tail: Sequence[Payload], ni_b: bytes, nr_b: bytes = b"") -> bytes:
        """HASH(step) per digest §8.2 over complete payloads; nonce bodies where the formula says _b."""
        parts = dict(zip([p.payload_type for p in tail], encode_each(tail)))
        key = (self.sa.hash_algorithm, self.sa.skeyid_a, PULL_MID)
        if step == 1:
            return pull_hash1(*key, ni=parts[PayloadType.NONCE], id_=parts[PayloadType.ID])
        if step == 2:
            return pull_hash2(*key, ni_b=ni_b, nr=parts[PayloadType.NONCE], sa=parts[PayloadType.SA])
        if step == 3:
            return pull_hash3(*key, ni_b=ni_b, nr_b=nr_b, gap=parts.get(PayloadType.GAP, b""))
        return pull_hash4(*key, ni_b=ni_b, nr_b=nr_b, seq=parts.get(PayloadType.SEQ, b""), kd=parts[PayloadType.KD])

    def forge(self, payloads: Sequence[Payload], iv: bytes) -> bytes:
        """``payloads`` encrypted as a PULL message whose CBC chain stands at ``iv``."""
        chain = CbcChain(self.chain.cipher, self.chain.key, iv)
        return chain.seal(self.sa.icookie, self.sa.rcookie, ExchangeType.GROUPKEY_PULL, payloads, PULL_MID)

    def reply(self, step: int, tail: Sequence[Payload], ni_b: bytes, nr_b: bytes = b"") -> bytes:
        """Message ``step`` with a correct HASH, sent as the exchange's next message (the chain moves past it)."""
        datagram = self.forge([Hash(self.expected_hash(step, tail, ni_b, nr_b)), *tail], self.chain.iv)
        self.chain.advance(decode_message(datagram))
        return datagram


def last_block(datagram: bytes) -> bytes:
    """The CBC state after ``datagram``: its last ciphertext block."""
    return decode_message(datagram).ciphertext[-16:]
