"""Main Mode initiator (RFC 2409 §5.4), sans-IO.

One object runs one Phase 1 towards one peer and then keeps the SA it
built: messages 1, 3 and 5 are retransmitted with backoff until the
matching reply arrives, the first precise failure ends the attempt, and
afterwards a ``Session`` answers informationals under the SA.  Nothing
here reads a clock or a socket: the driver passes ``now`` and sends what
comes back.
"""

from __future__ import annotations

import collections
import enum
import hmac
import os
from collections.abc import Sequence

from ..crypto.dh import KeyPair
from ..crypto.errors import CryptoError, InvalidPublicValue
from ..wire.errors import WireError
from ..wire.isakmp import Hash, Identification, KeyExchange, Nonce, Notify, SecurityAssociation
from ..wire.message import Message, Payload, decode_message
from ..wire.numbers import DOI, ExchangeType, NotifyType, name_of
from .events import Collector, DeleteReason, FailureReason, IkeSaEstablished, IkeSaFailed, NotifyReceived, Output
from .informational import InformationalError, open_protected
from .mainmode import (
    NONCE_SIZE,
    Derived,
    Exchanged,
    NoProposalChosen,
    Rng,
    UnexpectedPayloads,
    accept_choice,
    announces_dpd,
    check_nonce,
    generate_keypair,
    offer,
    pick,
    with_dpd_vendor_id,
)
from .proposals import Suite
from .psk import PreSharedKey
from .retransmit import RetransmitPolicy, Retransmission
from .sa import Address, CbcChain, IkeSa, Role
from .session import Session

_ZERO_COOKIE = bytes(8)
# Peer notifies that end our attempt, and how we classify them.
_FATAL_NOTIFIES = {
    NotifyType.NO_PROPOSAL_CHOSEN: FailureReason.NO_PROPOSAL_CHOSEN,
    NotifyType.AUTHENTICATION_FAILED: FailureReason.AUTHENTICATION_FAILED,
    NotifyType.INVALID_HASH_INFORMATION: FailureReason.AUTHENTICATION_FAILED,
}
_ERROR_NOTIFY_LIMIT = 16384  # RFC 2408 §3.14.1: types below are errors, above status


class InitiatorState(enum.Enum):
    IDLE = "idle"
    SENT_1 = "sent message 1"
    SENT_3 = "sent message 3"
    SENT_5 = "sent message 5"
    ESTABLISHED = "established"
    FAILED = "failed"
    CLOSED = "closed"


class Phase1Initiator:
    """Main Mode towards ``peer`` with pre-shared key ``psk``, offering ``suites`` in order."""

    def __init__(
        self,
        peer: Address,
        psk: PreSharedKey,
        suites: Sequence[Suite],
        identity: Identification,
        *,
        doi: int = DOI.GDOI,
        dpd: bool = True,
        dpd_idle: float | None = None,
        retransmit: RetransmitPolicy = RetransmitPolicy(),
        dpd_retransmit: RetransmitPolicy = RetransmitPolicy(),
        rng: Rng = os.urandom,
    ) -> None:
        if doi not in (DOI.IPSEC, DOI.GDOI):
            raise ValueError(f"Phase 1 DOI must be 1 (IPsec) or 2 (GDOI), not {doi}")
        self.peer = peer
        self.suites = tuple(suites)
        self.identity = identity
        self.state = InitiatorState.IDLE
        self.session: Session | None = None
        self.stats: collections.Counter[str] = collections.Counter()
        self._psk = psk
        self._doi = doi
        self._dpd = dpd
        self._dpd_idle = dpd_idle
        self._policy = retransmit
        self._dpd_policy = dpd_retransmit
        self._rng = rng
        self._offer = offer(self.suites, doi)
        self._icookie = b""
        self._rcookie = _ZERO_COOKIE
        self._suite: Suite | None = None
        self._peer_dpd = False
        self._pending: Retransmission | None = None
        self._last_reply = b""
        self._keypair: KeyPair | None = None
        self._ni = b""
        self._derived: Derived | None = None
        self._chain: CbcChain | None = None

    @property
    def sa(self) -> IkeSa | None:
        return self.session.sa if self.session is not None else None

    @property
    def timer(self) -> float | None:
        if self._pending is not None:
            return self._pending.deadline
        return self.session.deadline() if self.session is not None else None

    def start(self, now: float) -> Output:
        """Send message 1."""
        if self.state is not InitiatorState.IDLE:
            raise RuntimeError(f"initiator already {self.state.value}")
        out = Collector()
        self._icookie = self._rng(8)
        payloads = with_dpd_vendor_id((self._offer,), self._dpd)
        self._transmit(out, self._clear(payloads), now)
        self.state = InitiatorState.SENT_1
        return out.output(self.timer)

    def delete(self, now: float) -> Output:
        """Delete the established SA, telling the peer (informational DELETE)."""
        out = Collector()
        if self.session is not None and not self.session.closed:
            self.session.delete(out, DeleteReason.LOCAL)
            self.state = InitiatorState.CLOSED
        return out.output(self.timer)

    def probe(self, now: float) -> Output:
        """Send a DPD R-U-THERE under the established SA."""
        out = Collector()
        if self.session is None or self.session.closed:
            raise RuntimeError("no established IKE SA to probe")
        self.session.probe(out, now)
        return out.output(self.timer)

    def handle_timer(self, now: float) -> Output:
        out = Collector()
        pending = self._pending
        if pending is not None and pending.due(now):
            if pending.exhausted:
                attempts = f"{pending.sent} attempt{'s' if pending.sent != 1 else ''}"
                self._fail(out, FailureReason.NO_RESPONSE, f"no response from {self.peer[0]} after {attempts}")
            else:
                out.send(pending.resend(now), self.peer)
        elif self.session is not None:
            self.session.handle_timer(out, now)
            self._after_session()
        return out.output(self.timer)

    def receive(self, datagram: bytes, addr: Address, now: float) -> Output:
        out = Collector()
        if addr != self.peer:
            self.stats["stray source"] += 1
            return out.output(self.timer)
        try:
            message = decode_message(datagram)
        except WireError:
            self.stats["malformed"] += 1
            return out.output(self.timer)
        header = message.header
        if header.icookie != self._icookie or self.state in (InitiatorState.IDLE, InitiatorState.FAILED):
            self.stats["unknown cookies"] += 1
        elif self.session is not None:
            if header.rcookie == self._rcookie:
                self.session.receive(out, message, datagram, now)
                self._after_session()
            else:
                self.stats["unknown cookies"] += 1
        elif datagram == self._last_reply:
            self.stats["duplicate"] += 1
        elif header.rcookie not in (self._rcookie, _ZERO_COOKIE) and self.state is not InitiatorState.SENT_1:
            self.stats["unknown cookies"] += 1
        elif header.exchange == ExchangeType.INFORMATIONAL:
            self._informational(out, message)
        elif header.exchange != ExchangeType.IDENTITY_PROTECTION or header.message_id != 0:
            self.stats["unexpected exchange"] += 1
        else:
            self._main_mode(out, message, datagram, now)
        return out.output(self.timer)

    # -- Main Mode ---------------------------------------------------------

    def _main_mode(self, out: Collector, message: Message, datagram: bytes, now: float) -> None:
        expect_encrypted = self.state is InitiatorState.SENT_5
        if message.encrypted != expect_encrypted or message.header.rcookie == _ZERO_COOKIE:
            self.stats["unexpected message"] += 1
            return
        try:
            if self.state is InitiatorState.SENT_1:
                self._message2(out, message, now)
            elif self.state is InitiatorState.SENT_3:
                self._message4(out, message, now)
            else:
                self._message6(out, message, now)
        except UnexpectedPayloads:
            self.stats["unexpected payloads"] += 1
            return
        self._last_reply = datagram

    def _message2(self, out: Collector, message: Message, now: float) -> None:
        (sa,) = pick(message.payloads, SecurityAssociation)
        assert isinstance(sa, SecurityAssociation)
        try:
            self._suite = accept_choice(self.suites, sa)
        except NoProposalChosen as err:
            self._fail(out, FailureReason.NO_PROPOSAL_CHOSEN, str(err))
            return
        self._rcookie = message.header.rcookie
        self._peer_dpd = announces_dpd(message.payloads)
        self._keypair = generate_keypair(self._suite.dh, self._rng)
        self._ni = self._rng(NONCE_SIZE)
        payloads = (KeyExchange(self._keypair.public_value), Nonce(self._ni))
        self._transmit(out, self._clear(payloads), now)
        self.state = InitiatorState.SENT_3

    def _message4(self, out: Collector, message: Message, now: float) -> None:
        ke, nonce = pick(message.payloads, KeyExchange, Nonce)
        assert isinstance(ke, KeyExchange) and isinstance(nonce, Nonce) and self._suite and self._keypair
        try:
            check_nonce(nonce.data)
            g_xy = self._keypair.shared_secret(ke.data)
        except (ValueError, InvalidPublicValue) as err:
            self._fail(out, FailureReason.INVALID_KEY_EXCHANGE, f"invalid key exchange from {self.peer[0]}: {err}")
            return
        exchanged = Exchanged(
            self._suite,
            self._icookie,
            self._rcookie,
            self._offer.encode_body(),
            self._keypair.public_value,
            ke.data,
            self._ni,
            nonce.data,
            g_xy,
        )
        self._derived = exchanged.derive(self._psk)
        self._chain = self._derived.message5_chain()
        payloads = (self.identity, Hash(self._derived.hash_i(self.identity)))
        sealed = self._chain.seal(self._icookie, self._rcookie, ExchangeType.IDENTITY_PROTECTION, payloads, 0)
        self._transmit(out, sealed, now)
        self.state = InitiatorState.SENT_5

    def _message6(self, out: Collector, message: Message, now: float) -> None:
        assert self._chain is not None and self._derived is not None and self._suite is not None
        try:
            payloads = self._chain.open(message)
        except (WireError, CryptoError):
            self._fail(
                out,
                FailureReason.AUTHENTICATION_FAILED,
                f"authentication failed: message 6 from {self.peer[0]} did not decrypt to valid payloads "
                "(pre-shared key differs?)",
            )
            return
        idir, hash_r = pick(payloads, Identification, Hash)
        assert isinstance(idir, Identification) and isinstance(hash_r, Hash)
        if not hmac.compare_digest(hash_r.data, self._derived.hash_r(idir)):
            self._fail(out, FailureReason.AUTHENTICATION_FAILED, "authentication failed: HASH_R mismatch (pre-shared key differs?)")
            return
        self._chain.advance(message)
        sa = self._sa(idir, self._chain.iv, now)
        self.session = Session(
            sa, self._rng, self.stats, dpd_policy=self._dpd_policy, dpd_idle=self._dpd_idle, last_heard=now
        )
        self._pending = None
        self.state = InitiatorState.ESTABLISHED
        out.emit(IkeSaEstablished(sa))

    def _sa(self, peer_identity: Identification, last_block: bytes, now: float) -> IkeSa:
        assert self._derived is not None
        return self._derived.establish(
            Role.INITIATOR, self.peer, self._doi, self.identity, peer_identity, last_block, now, self._peer_dpd
        )

    # -- informationals during Main Mode -------------------------------------

    def _informational(self, out: Collector, message: Message) -> None:
        """A notify before the SA exists: in clear, or encrypted by a peer whose keys may differ."""
        if not message.encrypted:
            notifies = [p for p in message.payloads if isinstance(p, Notify)]
            self._peer_notifies(out, notifies, protected=False)
            return
        if self.state is not InitiatorState.SENT_5 or self._chain is None:
            self.stats["unexpected message"] += 1
            return
        # The peer derived keys from our message 5; try them as if the SA were up.
        provisional = self._sa(self.identity, self._chain.iv, 0.0)
        try:
            info = open_protected(provisional, message)
        except (InformationalError, WireError, CryptoError):
            self._fail(
                out,
                FailureReason.AUTHENTICATION_FAILED,
                f"authentication failed: {self.peer[0]} answered message 5 with a notify that does not decrypt "
                "under our keys (pre-shared key differs?)",
            )
            return
        self._peer_notifies(out, list(info.notifies), protected=True)

    def _peer_notifies(self, out: Collector, notifies: list[Notify], protected: bool) -> None:
        for item in notifies:
            if item.notify_type >= _ERROR_NOTIFY_LIMIT:
                out.emit(NotifyReceived(self.peer, item.notify_type, item.data, None))
                continue
            name = name_of(NotifyType, item.notify_type)
            how = "" if protected else " (unauthenticated)"
            reason = _FATAL_NOTIFIES.get(item.notify_type, FailureReason.PEER_NOTIFY)  # type: ignore[call-overload]
            if reason is FailureReason.NO_PROPOSAL_CHOSEN:
                text = f"no proposal chosen by {self.peer[0]} (offered: {', '.join(s.name for s in self.suites)})"
            elif reason is FailureReason.AUTHENTICATION_FAILED:
                text = f"authentication failed: {self.peer[0]} sent {name}{how} (pre-shared key differs?)"
            else:
                text = f"{self.peer[0]} sent {name}{how} during Main Mode ({self.state.value})"
            self._fail(out, reason, text)
            return

    # -- helpers -------------------------------------------------------------

    def _clear(self, payloads: Sequence[Payload]) -> bytes:
        return Message.build(self._icookie, self._rcookie, ExchangeType.IDENTITY_PROTECTION, payloads).encode()

    def _transmit(self, out: Collector, datagram: bytes, now: float) -> None:
        self._pending = Retransmission.start(datagram, self.peer, self._policy, now)
        out.send(datagram, self.peer)

    def _fail(self, out: Collector, reason: FailureReason, text: str) -> None:
        self._pending = None
        self.state = InitiatorState.FAILED
        out.emit(IkeSaFailed(self.peer, reason, text))

    def _after_session(self) -> None:
        if self.session is not None and self.session.closed:
            self.state = InitiatorState.CLOSED
