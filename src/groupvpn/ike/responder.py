"""Main Mode responder (RFC 2409 §5.4), sans-IO, for any number of peers.

Responder cookies follow RFC 2408 §2.5.3: CKY-R = prf(secret, CKY-I |
peer address | peer port)[:8], with the secret rotated periodically.  A
retransmitted message 1 therefore maps onto the same cookie and record
without a second index, and nobody else can predict our cookies.

Full statelessness until message 3 is not possible in Main Mode: HASH_I
and HASH_R cover SAi_b, the initiator's whole SA payload from message 1,
which message 3 does not repeat.  So message 1 creates a small record
(SAi_b, the choice, the two datagrams), bounded per source address and in
total; the expensive work (Diffie-Hellman, nonce) waits for a message 3
that echoes our cookie and so proves the peer receives at its address.
Half-open records expire after ``half_open_timeout``.  A duplicate of the
last message from a peer gets the stored reply, never new state.
"""

from __future__ import annotations

import collections
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..crypto.errors import CryptoError, InvalidPublicValue
from ..crypto.prf import prf
from ..wire.errors import WireError
from ..wire.isakmp import Hash, Identification, KeyExchange, Nonce, Notify, SecurityAssociation
from ..wire.message import HEADER, Message, decode_message
from ..wire.numbers import (
    DOI,
    ExchangeType,
    HashAlgorithm,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from .events import Collector, DeleteReason, FailureReason, IkeSaEstablished, IkeSaFailed, NotifyReceived, Output
from .informational import clear_notify
from .mainmode import (
    NONCE_SIZE,
    Exchanged,
    NoProposalChosen,
    Rng,
    UnexpectedPayloads,
    announces_dpd,
    check_nonce,
    choose,
    generate_keypair,
    pick,
    with_dpd_vendor_id,
)
from .proposals import Suite
from .psk import PskStore
from .retransmit import RetransmitPolicy
from .sa import Address, IkeSa, Role
from .session import Session

_ZERO_COOKIE = bytes(8)
_COOKIE_PRF = HashAlgorithm.SHA2_256


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on half-open exchanges (message 1 seen, message 5 not yet accepted)."""

    per_source: int = 8
    total: int = 1024
    half_open_timeout: float = 30.0
    cookie_secret_lifetime: float = 600.0


@dataclass
class _HalfOpen:
    peer: Address
    icookie: bytes
    rcookie: bytes
    created: float
    sai_b: bytes
    suite: Suite
    doi: int
    peer_dpd: bool
    message1: bytes
    message2: bytes
    exchanged: Exchanged | None = field(default=None, repr=False)
    message3: bytes = b""
    message4: bytes = b""


class Phase1Responder:
    """Answers Main Mode from any peer that has a key in ``psks`` and shares a suite."""

    def __init__(
        self,
        psks: PskStore,
        suites: Sequence[Suite],
        identity: Identification,
        *,
        dois: frozenset[int] = frozenset({DOI.IPSEC, DOI.GDOI}),
        dpd: bool = True,
        dpd_idle: float | None = None,
        dpd_policy: RetransmitPolicy = RetransmitPolicy(),
        limits: Limits = Limits(),
        rng: Rng = os.urandom,
    ) -> None:
        self.identity = identity
        self.sessions: dict[bytes, Session] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self.configure(psks, suites)
        self._dois = dois
        self._dpd = dpd
        self._dpd_idle = dpd_idle
        self._dpd_policy = dpd_policy
        self._limits = limits
        self._rng = rng
        self._half_open: dict[bytes, _HalfOpen] = {}
        self._secret = b""
        self._rotate_at: float | None = None

    # -- public API ------------------------------------------------------------

    def configure(self, psks: PskStore, suites: Sequence[Suite]) -> None:
        """New keys and suites for exchanges that start from now on; established SAs stay up."""
        if not suites:
            raise ValueError("a responder needs at least one acceptable suite")
        self._psks = psks
        self.suites = tuple(suites)

    def sa(self, cookies: bytes) -> IkeSa | None:
        """The established SA with CKY-I | CKY-R = ``cookies``, if it is still up."""
        session = self.sessions.get(cookies)
        return session.sa if session is not None else None

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    @property
    def timer(self) -> float | None:
        times = [h.created + self._limits.half_open_timeout for h in self._half_open.values()]
        times += [t for s in self.sessions.values() if (t := s.deadline()) is not None]
        if self._rotate_at is not None:
            times.append(self._rotate_at)
        return min(times, default=None)

    def delete(self, cookies: bytes, now: float) -> Output:
        out = Collector()
        session = self.sessions.pop(cookies, None)
        if session is not None:
            session.delete(out, DeleteReason.LOCAL)
        return out.output(self.timer)

    def probe(self, cookies: bytes, now: float) -> Output:
        out = Collector()
        self.sessions[cookies].probe(out, now)
        return out.output(self.timer)

    def handle_timer(self, now: float) -> Output:
        out = Collector()
        if self._rotate_at is not None and now >= self._rotate_at:
            self._secret = self._rng(32)
            self._rotate_at = now + self._limits.cookie_secret_lifetime
        for key, record in list(self._half_open.items()):
            if now >= record.created + self._limits.half_open_timeout:
                del self._half_open[key]
                self.stats["half-open expired"] += 1
        for cookies, session in list(self.sessions.items()):
            session.handle_timer(out, now)
            if session.closed:
                del self.sessions[cookies]
        return out.output(self.timer)

    def receive(self, datagram: bytes, addr: Address, now: float) -> Output:
        out = Collector()
        try:
            message = decode_message(datagram)
        except WireError:
            self.stats["malformed"] += 1
            return out.output(self.timer)
        header = message.header
        cookies = header.icookie + header.rcookie
        session = self.sessions.get(cookies)
        if session is not None:
            if addr != session.sa.peer:
                self.stats["stray source"] += 1
            else:
                session.receive(out, message, datagram, now)
                if session.closed:
                    del self.sessions[cookies]
        elif header.exchange == ExchangeType.IDENTITY_PROTECTION and header.message_id == 0:
            if header.rcookie == _ZERO_COOKIE:
                self._message1(out, message, datagram, addr, now)
            else:
                self._continue(out, message, datagram, addr, now)
        elif header.exchange == ExchangeType.INFORMATIONAL:
            self._informational(out, message, addr)
        else:
            self.stats["unsupported exchange"] += 1
            self._refuse(out, header.icookie, header.rcookie, NotifyType.INVALID_EXCHANGE_TYPE, addr)
        return out.output(self.timer)

    # -- message 1 ---------------------------------------------------------

    def _cookie(self, icookie: bytes, addr: Address, now: float) -> bytes:
        if self._rotate_at is None:
            self._secret = self._rng(32)
            self._rotate_at = now + self._limits.cookie_secret_lifetime
        host, port = addr
        return prf(_COOKIE_PRF, self._secret, icookie, host.encode(), port.to_bytes(2, "big"))[:8]

    def _message1(self, out: Collector, message: Message, datagram: bytes, addr: Address, now: float) -> None:
        icookie = message.header.icookie
        if message.encrypted or message.header.next_payload != PayloadType.SA:
            self.stats["malformed"] += 1
            return
        rcookie = self._cookie(icookie, addr, now)
        known = self._half_open.get(icookie + rcookie)
        if known is not None:
            if datagram == known.message1:
                self.stats["duplicate"] += 1
                out.send(known.message2, addr)
            else:
                self.stats["unexpected main mode"] += 1
            return
        if self._over_limit(addr):
            self.stats["half-open limit"] += 1
            return
        try:
            (sa,) = pick(message.payloads, SecurityAssociation)
        except UnexpectedPayloads:
            self._refuse(out, icookie, rcookie, NotifyType.INVALID_PAYLOAD_TYPE, addr)
            return
        assert isinstance(sa, SecurityAssociation)
        if sa.doi not in self._dois:
            self._refuse(out, icookie, rcookie, NotifyType.DOI_NOT_SUPPORTED, addr)
            return
        if not self._psks.candidates(addr[0]):
            self._refuse(out, icookie, rcookie, NotifyType.AUTHENTICATION_FAILED, addr, sa.doi)
            out.emit(
                IkeSaFailed(addr, FailureReason.AUTHENTICATION_FAILED, f"authentication failed: no pre-shared key for {addr[0]}")
            )
            return
        try:
            reply, suite = choose(sa, self.suites)
        except NoProposalChosen as err:
            self._refuse(out, icookie, rcookie, NotifyType.NO_PROPOSAL_CHOSEN, addr, sa.doi)
            out.emit(IkeSaFailed(addr, FailureReason.NO_PROPOSAL_CHOSEN, f"{err} from {addr[0]}"))
            return
        payloads = with_dpd_vendor_id((reply,), self._dpd)
        message2 = Message.build(icookie, rcookie, ExchangeType.IDENTITY_PROTECTION, payloads).encode()
        # SA is the first payload (checked above): its body starts right after header and generic header.
        sa_length = int.from_bytes(datagram[HEADER.size + 2 : HEADER.size + 4], "big")
        self._half_open[icookie + rcookie] = _HalfOpen(
            peer=addr,
            icookie=icookie,
            rcookie=rcookie,
            created=now,
            sai_b=datagram[HEADER.size + 4 : HEADER.size + sa_length],
            suite=suite,
            doi=sa.doi,
            peer_dpd=announces_dpd(message.payloads),
            message1=datagram,
            message2=message2,
        )
        out.send(message2, addr)

    def _over_limit(self, addr: Address) -> bool:
        if len(self._half_open) >= self._limits.total:
            return True
        same = sum(1 for h in self._half_open.values() if h.peer[0] == addr[0])
        return same >= self._limits.per_source

    # -- messages 3 and 5 ----------------------------------------------------

    def _continue(self, out: Collector, message: Message, datagram: bytes, addr: Address, now: float) -> None:
        record = self._half_open.get(message.header.icookie + message.header.rcookie)
        if record is None or record.peer != addr:
            self.stats["unknown cookies"] += 1
            return
        if record.exchanged is None and not message.encrypted:
            self._message3(out, record, message, datagram, now)
        elif record.exchanged is not None and not message.encrypted and datagram == record.message3:
            self.stats["duplicate"] += 1
            out.send(record.message4, addr)
        elif record.exchanged is not None and message.encrypted:
            self._message5(out, record, message, datagram, now)
        else:
            self.stats["unexpected main mode"] += 1

    def _message3(self, out: Collector, record: _HalfOpen, message: Message, datagram: bytes, now: float) -> None:
        try:
            ke, nonce = pick(message.payloads, KeyExchange, Nonce)
        except UnexpectedPayloads:
            self.stats["unexpected payloads"] += 1
            return
        assert isinstance(ke, KeyExchange) and isinstance(nonce, Nonce)
        keypair = generate_keypair(record.suite.dh, self._rng)
        try:
            check_nonce(nonce.data)
            g_xy = keypair.shared_secret(ke.data)
        except (ValueError, InvalidPublicValue) as err:
            self._abandon(out, record, NotifyType.INVALID_KEY_INFORMATION, FailureReason.INVALID_KEY_EXCHANGE,
                          f"invalid key exchange from {record.peer[0]}: {err}")
            return
        nr = self._rng(NONCE_SIZE)
        record.exchanged = Exchanged(
            record.suite, record.icookie, record.rcookie, record.sai_b, ke.data, keypair.public_value, nonce.data, nr, g_xy
        )
        record.message3 = datagram
        record.message4 = Message.build(
            record.icookie, record.rcookie, ExchangeType.IDENTITY_PROTECTION, (KeyExchange(keypair.public_value), Nonce(nr))
        ).encode()
        out.send(record.message4, record.peer)

    def _message5(self, out: Collector, record: _HalfOpen, message: Message, datagram: bytes, now: float) -> None:
        assert record.exchanged is not None
        problem = f"message 5 from {record.peer[0]} did not decrypt to valid payloads (pre-shared key differs?)"
        for candidate in self._psks.candidates(record.peer[0]):
            derived = record.exchanged.derive(candidate.key)
            chain = derived.message5_chain()
            try:
                idii, hash_i = pick(chain.open(message), Identification, Hash)
            except (WireError, CryptoError, UnexpectedPayloads):
                continue
            assert isinstance(idii, Identification) and isinstance(hash_i, Hash)
            if candidate.identity is not None and (idii.id_type, idii.data) != (
                candidate.identity.id_type,
                candidate.identity.data,
            ):
                problem = f"no pre-shared key for identity {idii.describe()['data']}"
                continue
            if not hmac.compare_digest(hash_i.data, derived.hash_i(idii)):
                problem = "HASH_I mismatch (pre-shared key differs?)"
                continue
            chain.advance(message)
            payloads = (self.identity, Hash(derived.hash_r(self.identity)))
            message6 = chain.seal(record.icookie, record.rcookie, ExchangeType.IDENTITY_PROTECTION, payloads, 0)
            sa = derived.establish(
                Role.RESPONDER, record.peer, record.doi, self.identity, idii, chain.iv, now, record.peer_dpd
            )
            del self._half_open[record.icookie + record.rcookie]
            self.sessions[sa.cookies] = Session(
                sa,
                self._rng,
                self.stats,
                dpd_policy=self._dpd_policy,
                dpd_idle=self._dpd_idle,
                final_exchange=(datagram, message6),
                last_heard=now,
            )
            out.send(message6, record.peer)
            out.emit(IkeSaEstablished(sa))
            return
        self._abandon(out, record, NotifyType.AUTHENTICATION_FAILED, FailureReason.AUTHENTICATION_FAILED,
                      f"authentication failed: {problem}")

    # -- errors and informationals ---------------------------------------------

    def _abandon(self, out: Collector, record: _HalfOpen, notify_type: NotifyType, reason: FailureReason, text: str) -> None:
        del self._half_open[record.icookie + record.rcookie]
        self._refuse(out, record.icookie, record.rcookie, notify_type, record.peer, record.doi)
        out.emit(IkeSaFailed(record.peer, reason, text))

    def _refuse(
        self, out: Collector, icookie: bytes, rcookie: bytes, notify_type: NotifyType, addr: Address, doi: int = DOI.IPSEC
    ) -> None:
        """A clear error notify: there are no keys yet to protect it (RFC 2409 §5.7)."""
        payload = Notify(notify_type, doi, ProtocolId.ISAKMP, icookie + rcookie)
        out.send(clear_notify(icookie, rcookie, payload, self._message_id()), addr)

    def _message_id(self) -> int:
        return int.from_bytes(self._rng(4), "big") or 1

    def _informational(self, out: Collector, message: Message, addr: Address) -> None:
        """Informationals for cookies without an SA: only clear ones from the record's peer mean anything."""
        record = self._half_open.get(message.header.icookie + message.header.rcookie)
        if message.encrypted or record is None or record.peer != addr:
            self.stats["unknown cookies"] += 1
            return
        for item in message.payloads:
            if isinstance(item, Notify):
                out.emit(NotifyReceived(addr, item.notify_type, item.data, None))
