"""GROUPKEY-PULL (RFC 6407 §3.2-3.4) under an established IKE SA, sans-IO.

    member                                   key server
    HDR*, HASH(1), Ni, ID           -->
                                    <--      HDR*, HASH(2), Nr, SA
    HDR*, HASH(3) [, GAP]           -->
                                    <--      HDR*, HASH(4) [, SEQ], KD

A ``PullInitiator`` runs one registration of a member; a key server keeps
one ``PullResponder`` per (IKE SA, Message ID).  Both take datagrams and
``now`` and return datagrams for the IKE SA's peer plus events.  Only the
member retransmits (its last message, with backoff); the key server
answers a duplicate request with the reply it cached, without new state.

Every message is authenticated before it is interpreted.  Each HASH covers
the raw octets of all payloads after it, so it is checked on the payload
chain split by generic headers alone; only then are the payloads decoded.
A message that does not authenticate may be forged and is dropped (and
counted in ``stats``); an authentic one that fails decoding or the policy
checks ends the exchange with a precise reason and an informational
notify to the peer.
"""

from __future__ import annotations

import collections
import enum
import hmac
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from ..crypto.errors import CryptoError
from ..crypto.gdoi import pull_hash1, pull_hash2, pull_hash3, pull_hash4
from ..ike.informational import notify, protected
from ..ike.retransmit import RetransmitPolicy, Retransmission
from ..ike.sa import IkeSa
from ..wire.attributes import Attribute
from ..wire.errors import WireError
from ..wire.gdoi import Gap, GroupSa, KeyDownload, SequenceNumber
from ..wire.isakmp import GENERIC_HEADER, Identification, Nonce, read_generic_header
from ..wire.isakmp import Hash as HashPayload
from ..wire.message import HEADER, Payload, decode_message, encode_each
from ..wire.numbers import ExchangeType, GapAttribute, IdType, NotifyType, PayloadType, name_of
from .errors import PolicyError
from .events import (
    FailureKind,
    MemberRegistered,
    Peer,
    PullEvent,
    PullOutput,
    RegistrationComplete,
    RegistrationFailed,
    RegistrationRefused,
)
from .policy import GroupPolicy, SaPolicy, SenderIds

Rng = Callable[[int], bytes]

NONCE_SIZE = 32
NONCE_RANGE = (8, 128)  # RFC 6407 §5.8
_ERROR_NOTIFY_LIMIT = 16384  # RFC 2408 §3.14.1: notify types below are errors, above status
_NOTIFY_TEXT_LIMIT = 256  # octets of the reason we put in a notify's data
_MID_ATTEMPTS = 64

_P = PayloadType
# The payloads after HDR in each message (RFC 6407 §3.2, Figure 2).
_LAYOUTS: dict[int, frozenset[tuple[int, ...]]] = {
    1: frozenset({(_P.HASH, _P.NONCE, _P.ID)}),
    2: frozenset({(_P.HASH, _P.NONCE, _P.SA)}),
    3: frozenset({(_P.HASH,), (_P.HASH, _P.GAP)}),
    4: frozenset({(_P.HASH, _P.KD), (_P.HASH, _P.SEQ, _P.KD)}),
}


class PullState(enum.Enum):
    IDLE = "idle"
    SENT_1 = "sent message 1"
    SENT_2 = "sent message 2"
    SENT_3 = "sent message 3"
    DONE = "done"
    FAILED = "failed"
    REFUSED = "refused"


class _Dropped(Exception):
    """A datagram to ignore without answering; ``args[0]`` is its ``stats`` key."""


@dataclass
class _Collector:
    datagrams: list[bytes] = field(default_factory=list)
    events: list[PullEvent] = field(default_factory=list)

    def output(self) -> PullOutput:
        return PullOutput(tuple(self.datagrams), tuple(self.events))


def _split(first: int, plaintext: bytes) -> list[tuple[int, bytes]]:
    """(type, complete payload octets) along the chain; the padding after it is left out."""
    out: list[tuple[int, bytes]] = []
    ptype, pos = first, 0
    while ptype != PayloadType.NONE:
        next_type, length = read_generic_header(plaintext, pos, name_of(PayloadType, ptype), HEADER.size)
        out.append((ptype, plaintext[pos : pos + length]))
        ptype, pos = next_type, pos + length
    return out


class _Exchange:
    """What both sides keep for one PULL: the CBC chain, the nonces and the HASH(1)-(4) rules."""

    def __init__(self, sa: IkeSa, message_id: int, rng: Rng) -> None:
        if not 0 < message_id <= 0xFFFFFFFF:
            raise ValueError("a GROUPKEY-PULL needs a non-zero 32-bit Message ID (RFC 2408 §3.1)")
        self.sa = sa
        self.message_id = message_id
        self.chain = sa.exchange(message_id)
        self.rng = rng
        self.ni_b = b""
        self.nr_b = b""

    def digest(self, step: int, parts: Mapping[int, bytes]) -> bytes:
        """HASH(``step``) over the complete payloads in ``parts`` (digest §8.2)."""
        key = (self.sa.hash_algorithm, self.sa.skeyid_a, self.message_id)
        if step == 1:
            return pull_hash1(*key, ni=parts[_P.NONCE], id_=parts[_P.ID])
        if step == 2:
            return pull_hash2(*key, ni_b=self.ni_b, nr=parts[_P.NONCE], sa=parts[_P.SA])
        if step == 3:
            return pull_hash3(*key, ni_b=self.ni_b, nr_b=self.nr_b, gap=parts.get(_P.GAP, b""))
        return pull_hash4(*key, ni_b=self.ni_b, nr_b=self.nr_b, seq=parts.get(_P.SEQ, b""), kd=parts[_P.KD])

    def seal(self, step: int, tail: Sequence[Payload]) -> bytes:
        """Message ``step``: HASH first, then ``tail``, encrypted on this exchange's chain."""
        parts = {p.payload_type: octets for p, octets in zip(tail, encode_each(tail))}
        payloads = (HashPayload(self.digest(step, parts)), *tail)
        sa = self.sa
        return self.chain.seal(sa.icookie, sa.rcookie, ExchangeType.GROUPKEY_PULL, payloads, self.message_id)

    def open(self, step: int, datagram: bytes) -> tuple[Payload, ...]:
        """Authenticate message ``step``, then decode it.

        Raises ``_Dropped`` for whatever may be forged or belongs elsewhere,
        ``WireError`` for an authentic message that does not decode.
        """
        try:
            message = decode_message(datagram)
        except WireError:
            raise _Dropped("malformed") from None
        header, sa = message.header, self.sa
        if (
            header.exchange != ExchangeType.GROUPKEY_PULL
            or header.message_id != self.message_id
            or (header.icookie, header.rcookie) != (sa.icookie, sa.rcookie)
            or not message.encrypted
        ):
            raise _Dropped("not this exchange")
        try:
            plaintext = self.chain.cipher.decrypt(self.chain.key, self.chain.iv, message.ciphertext)
            raw = _split(header.next_payload, plaintext)
        except (CryptoError, WireError):
            raise _Dropped("undecryptable") from None
        if tuple(t for t, _ in raw) not in _LAYOUTS[step]:
            raise _Dropped("unexpected payloads")
        parts = dict(raw)
        if not hmac.compare_digest(parts[_P.HASH][GENERIC_HEADER.size :], self.digest(step, parts)):
            raise _Dropped("bad hash")
        payloads, _padding = message.decode_plaintext(plaintext)
        self.chain.advance(message)
        return payloads

    def informational(self, notify_type: int, reason: str) -> bytes:
        """``HDR*, HASH(1), N`` telling the peer ``reason``, under a fresh M-ID (RFC 2409 §5.7)."""
        payload = notify(self.sa, notify_type, reason.encode()[:_NOTIFY_TEXT_LIMIT])
        for _ in range(_MID_ATTEMPTS):
            mid = int.from_bytes(self.rng(4), "big")
            if mid not in (0, self.message_id):
                return protected(self.sa, payload, mid)
        raise RuntimeError("random source keeps repeating Message IDs")


def _nonce_problem(nonce: Nonce) -> str | None:
    low, high = NONCE_RANGE
    if low <= len(nonce.data) <= high:
        return None
    return f"its nonce of {len(nonce.data)} octets is outside {low}..{high} (RFC 6407 §5.8)"


# -- member ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LastPush:
    """The newest GROUPKEY-PUSH the member accepted: its KEK SPI and sequence number."""

    kek_spi: bytes
    seq: int


class PullInitiator:
    """A member's registration to group ``group_id`` over ``sa`` (RFC 6407 §3.3).

    ``message_id`` must be unused under ``sa`` (the IKE session hands them
    out).  ``last_push`` makes a stale SEQ in message 4 be ignored when
    PULL and PUSH raced; ``sender_ids`` is how many SIDs to ask for when a
    TEK uses a counter mode (one is always given, RFC 6407 §3.5).
    """

    def __init__(
        self,
        sa: IkeSa,
        group_id: int,
        message_id: int,
        *,
        last_push: LastPush | None = None,
        sender_ids: int = 1,
        retransmit: RetransmitPolicy = RetransmitPolicy(),
        rng: Rng = os.urandom,
    ) -> None:
        if not 0 <= group_id <= 0xFFFFFFFF:
            raise ValueError(f"group ID {group_id} does not fit 4 octets")
        if not 1 <= sender_ids <= 0xFFFF:
            raise ValueError(f"cannot ask for {sender_ids} sender IDs")
        self.group_id = group_id
        self.state = PullState.IDLE
        self.stats: collections.Counter[str] = collections.Counter()
        self._exchange = _Exchange(sa, message_id, rng)
        self._last_push = last_push
        self._sender_ids = sender_ids
        self._retransmit = retransmit
        self._sa_policy: SaPolicy | None = None
        self._pending: Retransmission | None = None
        self._accepted = b""  # the last message we accepted, to spot its duplicates

    @property
    def next_deadline(self) -> float | None:
        return self._pending.deadline if self._pending is not None else None

    @property
    def _server(self) -> str:
        return f"key server {self._exchange.sa.peer[0]}"

    def start(self, now: float) -> bytes:
        """Message 1: HASH(1), Ni, ID (ID_KEY_ID with the 4-octet group number)."""
        if self.state is not PullState.IDLE:
            raise RuntimeError(f"registration already {self.state.value}")
        self._exchange.ni_b = self._exchange.rng(NONCE_SIZE)
        datagram = self._exchange.seal(1, (Nonce(self._exchange.ni_b), Identification.group(self.group_id)))
        self._pending = Retransmission.start(datagram, self._exchange.sa.peer, self._retransmit, now)
        self.state = PullState.SENT_1
        return datagram

    def receive(self, datagram: bytes, now: float) -> PullOutput:
        out = _Collector()
        step = {PullState.SENT_1: 2, PullState.SENT_3: 4}.get(self.state)
        if datagram == self._accepted:
            self.stats["duplicate"] += 1
        elif step is None:
            self.stats["unexpected"] += 1
        else:
            self._handle(out, step, datagram, now)
        return out.output()

    def _handle(self, out: _Collector, step: int, datagram: bytes, now: float) -> None:
        try:
            payloads = self._exchange.open(step, datagram)
        except _Dropped as dropped:
            self.stats[dropped.args[0]] += 1
            return
        except WireError as err:
            self._malformed(out, f"message {step} from {self._server} is malformed: {err}")
            return
        self._accepted = datagram
        if step == 2:
            self._message2(out, payloads, now)
        else:
            self._message4(out, payloads)

    def handle_timer(self, now: float) -> PullOutput:
        out = _Collector()
        pending = self._pending
        if pending is not None and pending.due(now):
            if pending.exhausted:
                sent = 1 if self.state is PullState.SENT_1 else 3
                self._fail(
                    out,
                    FailureKind.NO_RESPONSE,
                    f"no reply from {self._server} to GROUPKEY-PULL message {sent} for group {self.group_id} "
                    f"after {pending.sent} attempts",
                )
            else:
                out.datagrams.append(pending.resend(now))
        return out.output()

    def peer_notify(self, notify_type: int, data: bytes, now: float) -> PullOutput:
        """An error notify the IKE session authenticated under this SA: the key server refuses us.

        Notifies carry no PULL Message ID, so the driver hands one to every
        registration running under the SA; finished ones ignore it.  Like
        every input of a core it comes with ``now``; a refusal needs no timer.
        """
        out = _Collector()
        if self.state not in (PullState.SENT_1, PullState.SENT_3) or notify_type >= _ERROR_NOTIFY_LIMIT:
            self.stats["ignored notify"] += 1
            return out.output()
        text = "".join(c for c in data.decode("utf-8", "replace") if c.isprintable()).strip()
        reason = f"{self._server} refused registration to group {self.group_id}: {name_of(NotifyType, notify_type)}"
        self._fail(out, FailureKind.REFUSED, f"{reason} ({text})" if text else reason)
        return out.output()

    def _message2(self, out: _Collector, payloads: tuple[Payload, ...], now: float) -> None:
        _hash, nonce, sa_payload = payloads
        assert isinstance(nonce, Nonce) and isinstance(sa_payload, GroupSa)
        problem = _nonce_problem(nonce)
        if problem is not None:
            self._malformed(out, f"message 2 from {self._server} is malformed: {problem}")
            return
        try:
            self._sa_policy = SaPolicy.from_wire(sa_payload)
        except PolicyError as err:
            self._reject(out, err)
            return
        self._exchange.nr_b = nonce.data
        tail: tuple[Payload, ...] = ()
        if self._sender_ids > 1 and self._sa_policy.counter_mode:
            tail = (Gap((Attribute.tv(GapAttribute.SENDER_ID_REQUEST, self._sender_ids),)),)
        datagram = self._exchange.seal(3, tail)
        self._pending = Retransmission.start(datagram, self._exchange.sa.peer, self._retransmit, now)
        out.datagrams.append(datagram)
        self.state = PullState.SENT_3

    def _message4(self, out: _Collector, payloads: tuple[Payload, ...]) -> None:
        assert self._sa_policy is not None
        kd = payloads[-1]
        assert isinstance(kd, KeyDownload)
        seq = payloads[1] if isinstance(payloads[1], SequenceNumber) else None
        kek = self._sa_policy.kek
        if (seq is None) != (kek is None):
            has = "a SEQ payload but no KEK" if kek is None else "a KEK but no SEQ payload"
            self._malformed(out, f"{self._server} sent {has} (RFC 6407 §3.2)")
            return
        try:
            policy = GroupPolicy.with_key_download(self.group_id, self._sa_policy, kd)
        except PolicyError as err:
            self._reject(out, err)
            return
        number, stale = None, False
        if seq is not None and kek is not None:
            number = seq.number
            last = self._last_push
            if last is not None and last.kek_spi == kek.spi and number < last.seq:
                number, stale = last.seq, True
        self._pending = None
        self.state = PullState.DONE
        out.events.append(RegistrationComplete(policy, number, stale))

    def _malformed(self, out: _Collector, reason: str) -> None:
        self._fail(out, FailureKind.MALFORMED, reason, NotifyType.PAYLOAD_MALFORMED)

    def _reject(self, out: _Collector, err: PolicyError) -> None:
        reason = f"group {self.group_id} policy from {self._server} rejected: {err.reason}"
        self._fail(out, FailureKind.POLICY_REJECTED, reason, err.notify_type)

    def _fail(self, out: _Collector, kind: FailureKind, reason: str, notify_type: int | None = None) -> None:
        self._pending = None
        self.state = PullState.FAILED
        if notify_type is not None:
            out.datagrams.append(self._exchange.informational(notify_type, reason))
        out.events.append(RegistrationFailed(kind, reason))


# -- key server --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Offer:
    """What the key server offers a member now: the group policy and the last PUSH SEQ under its KEK.

    The offer is taken at message 1 and delivered whole at message 4, so
    the KD always matches the SA the member accepted.
    """

    policy: GroupPolicy
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a member may not have the group: sent to it as ``notify_type`` with ``reason`` as data."""

    notify_type: NotifyType
    reason: str


class GroupDirectory(Protocol):
    """The key server's groups as a ``PullResponder`` needs them."""

    def lookup(self, group_id: int, peer: Peer) -> Offer | Refusal:
        """The offer for ``peer`` joining ``group_id`` (message 1); must not change group state.

        Unknown groups are refused with INVALID_ID_INFORMATION, members the
        group does not admit with AUTHENTICATION_FAILED.
        """
        ...

    def allocate_sender_ids(self, group_id: int, peer: Peer, count: int) -> SenderIds | Refusal:
        """Commit ``count`` fresh SIDs to ``peer`` (message 3 validated; a TEK uses a counter mode)."""
        ...


class PullResponder:
    """The key server side of one PULL: the IKE SA ``sa`` and Message ID ``message_id`` (RFC 6407 §3.4).

    Nothing in the directory changes before message 3 validates.  For
    per-source rate limiting the driver sees ``peer``, ``state`` and
    ``last_activity``; a duplicate costs one comparison and no crypto.
    """

    def __init__(self, sa: IkeSa, message_id: int, directory: GroupDirectory, *, rng: Rng = os.urandom) -> None:
        self.peer = Peer(sa.peer, sa.peer_identity)
        self.state = PullState.IDLE
        self.group_id: int | None = None
        self.last_activity: float | None = None
        self.stats: collections.Counter[str] = collections.Counter()
        self._exchange = _Exchange(sa, message_id, rng)
        self._directory = directory
        self._offer: Offer | None = None
        self._request = b""  # the request we answered last, and our answer
        self._reply = b""

    @property
    def finished(self) -> bool:
        """Message 4 or a refusal went out; the object only answers duplicates now."""
        return self.state in (PullState.DONE, PullState.REFUSED)

    @property
    def _member(self) -> str:
        return f"member {self.peer.address[0]}"

    def receive(self, datagram: bytes, now: float) -> PullOutput:
        out = _Collector()
        self.last_activity = now
        if self._request and datagram == self._request:
            self.stats["duplicate"] += 1
            out.datagrams.append(self._reply)
            return out.output()
        step = {PullState.IDLE: 1, PullState.SENT_2: 3}.get(self.state)
        if step is None:
            self.stats["unexpected"] += 1
            return out.output()
        try:
            payloads = self._exchange.open(step, datagram)
        except _Dropped as dropped:
            self.stats[dropped.args[0]] += 1
        except WireError as err:
            self._malformed(out, datagram, f"message {step} from {self._member} is malformed: {err}")
        else:
            if step == 1:
                self._message1(out, datagram, payloads)
            else:
                self._message3(out, datagram, payloads)
        return out.output()

    def _message1(self, out: _Collector, datagram: bytes, payloads: tuple[Payload, ...]) -> None:
        _hash, nonce, ident = payloads
        assert isinstance(nonce, Nonce) and isinstance(ident, Identification)
        problem = _nonce_problem(nonce)
        if problem is not None:
            self._malformed(out, datagram, f"message 1 from {self._member} is malformed: {problem}")
            return
        group_id = ident.group_number
        if group_id is None or ident.protocol or ident.port:
            reason = (
                f"{self._member} named its group with {name_of(IdType, ident.id_type)} of {len(ident.data)} "
                "octets; a group ID is an ID_KEY_ID of 4 octets with protocol and port 0"
            )
            self._refuse(out, datagram, Refusal(NotifyType.INVALID_ID_INFORMATION, reason))
            return
        self.group_id = group_id
        answer = self._directory.lookup(group_id, self.peer)
        if isinstance(answer, Refusal):
            self._refuse(out, datagram, answer)
            return
        self._offer = answer
        self._exchange.ni_b = nonce.data
        self._exchange.nr_b = self._exchange.rng(NONCE_SIZE)
        reply = self._exchange.seal(2, (Nonce(self._exchange.nr_b), answer.policy.sa.to_wire()))
        self._answer(out, datagram, reply, PullState.SENT_2)

    def _message3(self, out: _Collector, datagram: bytes, payloads: tuple[Payload, ...]) -> None:
        assert self._offer is not None and self.group_id is not None
        requested = 1
        if len(payloads) == 2:
            gap = payloads[1]
            assert isinstance(gap, Gap)
            asks = [a.int for a in gap.attributes if a.type == GapAttribute.SENDER_ID_REQUEST]
            if len(asks) != 1 or len(gap.attributes) != 1 or asks[0] == 0:
                names = ", ".join(name_of(GapAttribute, a.type) for a in gap.attributes) or "nothing"
                wanted = "a member sends one non-zero SENDER_ID_REQUEST"
                reason = f"message 3 GAP from {self._member} carries {names}; {wanted}"
                self._malformed(out, datagram, reason)
                return
            requested = asks[0]
        policy, sender_ids = self._offer.policy, None
        if policy.sa.counter_mode:
            answer = self._directory.allocate_sender_ids(self.group_id, self.peer, requested)
            if isinstance(answer, Refusal):
                self._refuse(out, datagram, answer)
                return
            policy, sender_ids = replace(policy, sender_ids=answer), answer
        seq = None if policy.kek is None else self._offer.seq
        tail: list[Payload] = [] if seq is None else [SequenceNumber(seq)]
        reply = self._exchange.seal(4, [*tail, policy.key_download()])
        self._answer(out, datagram, reply, PullState.DONE)
        out.events.append(MemberRegistered(self.peer, self.group_id, self._exchange.message_id, seq, sender_ids))

    def _answer(self, out: _Collector, request: bytes, reply: bytes, state: PullState) -> None:
        self._request, self._reply, self.state = request, reply, state
        out.datagrams.append(reply)

    def _malformed(self, out: _Collector, request: bytes, reason: str) -> None:
        self._refuse(out, request, Refusal(NotifyType.PAYLOAD_MALFORMED, reason))

    def _refuse(self, out: _Collector, request: bytes, refusal: Refusal) -> None:
        self._answer(out, request, self._exchange.informational(refusal.notify_type, refusal.reason), PullState.REFUSED)
        out.events.append(RegistrationRefused(self.peer, self.group_id, refusal.notify_type, refusal.reason))
