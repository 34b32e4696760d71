"""The GROUPKEY-PUSH acknowledgement (RFC 8263), sans-IO: a member builds it, a key server verifies it.

    member                                        key server
    HDR, HASH, SEQ, ID        ------>             (exchange 35, clear, M-ID 0)

    ack_key = prf(KEK cipher key, "GROUPKEY-PUSH ACK\\0" | CKY-I | CKY-R | L)
    HASH    = prf(ack_key, SEQ | ID)

``build_ack`` makes the member's datagram (``PushReceiver`` calls it once a
push is accepted).  A key server keeps one ``AckVerifier`` per group: it
knows every KEK it pushed under, keeps a replaced or deleted one for a
grace period (RFC 8263 §6: members may still be acknowledging the push
that removed it), drops exact duplicates before any crypto (§5) and
returns who acknowledged which push.

The ID names the member by the address of its last GROUPKEY-PULL
(§3.4), which is how a key server knows its members; the UDP source of the
ack may differ (NAT), so the verifier reports both and matches nothing
itself.  Members are named by address: an ID_OID (which §3.4 also
allows, for IEC 62351 deployments) is refused as unsupported.  Only the
KEK-based ack types are implemented: the LKH ones key the hash with an
LKH leaf key, and groupvpn has no LKH.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from ..crypto.gdoi import AckKeyLength, Kek, ack_hash, ack_key
from ..ike.sa import Address
from ..wire.errors import WireError
from ..wire.gdoi import KEK_SPI_SIZE, SequenceNumber
from ..wire.isakmp import GENERIC_HEADER, Hash, Identification
from ..wire.message import HEADER, Header, Message, decode_message, encode_each
from ..wire.numbers import ExchangeType, Flags, IdType, KekAckType, name_of
from .policy import KekPolicy

MemberAddress = IPv4Address | IPv6Address

# The ack types keyed by the KEK (RFC 8263 §2); the LKH types need an LKH leaf key.
KEK_ACK_TYPES = frozenset({KekAckType.KEK_SHA256, KekAckType.KEK_SHA512})
# RFC 8263 §6: members answer within 5 s (jitter); a retired KEK stays well past that.
DEFAULT_GRACE = 30.0
DEFAULT_REMEMBERED = 4096
_ADDRESS_IDS = frozenset({IdType.IPV4_ADDR, IdType.IPV6_ADDR})
_SEQ_PAYLOAD = GENERIC_HEADER.size + 4
_LAYOUT = (Hash, SequenceNumber, Identification)


def build_ack(
    kek_spi: bytes,
    kek: Kek,
    ack_type: KekAckType,
    seq: int,
    member: MemberAddress,
    key_length: AckKeyLength = AckKeyLength.PRF_BLOCK,
) -> bytes:
    """``HDR, HASH, SEQ, ID`` acknowledging push ``seq`` that ``kek`` (the one that decrypted it) protected.

    ``member`` is the address this member used for its GROUPKEY-PULL.
    """
    if ack_type not in KEK_ACK_TYPES:
        raise ValueError(f"KEK_ACK_REQUESTED {name_of(KekAckType, ack_type)} needs LKH, which is not implemented")
    if len(kek_spi) != KEK_SPI_SIZE:
        raise ValueError(f"a KEK SPI is {KEK_SPI_SIZE} octets (CKY-I | CKY-R), got {len(kek_spi)}")
    tail = (SequenceNumber(seq), Identification.of(member))
    seq_octets, id_octets = encode_each(tail)
    digest = ack_hash(ack_type, ack_key(ack_type, kek.key, kek_spi, key_length), seq=seq_octets, id_=id_octets)
    payloads = (Hash(digest), *tail)
    return Message.build(kek_spi[:8], kek_spi[8:], ExchangeType.GROUPKEY_PUSH_ACK, payloads).encode()


@dataclass(frozen=True, slots=True)
class AckReceived:
    """``member`` (the ID: its PULL address) acknowledged push ``seq`` under KEK ``kek_spi``.

    ``source`` is where the ack came from; it differs from ``member``
    behind NAT or on a multi-homed member.
    """

    kek_spi: bytes
    seq: int
    member: MemberAddress
    source: Address


class AckRejection(enum.Enum):
    MALFORMED = "malformed"
    UNKNOWN_KEK = "unknown KEK"
    NOT_REQUESTED = "acks not requested"
    DUPLICATE = "duplicate"
    BAD_HASH = "bad hash"


@dataclass(frozen=True, slots=True)
class AckRejected:
    """An ack that was dropped; ``text`` is the operator-facing sentence."""

    reason: AckRejection
    text: str


class _Reject(Exception):
    def __init__(self, reason: AckRejection, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


@dataclass(slots=True)
class _AckSa:
    """What the key server keeps per KEK: the ack type and key when acks are requested."""

    ack_type: KekAckType | None
    key: bytes | None = field(repr=False)
    retired_until: float | None = None


class AckVerifier:
    """The key server side of RFC 8263 for one group.

    ``install`` each KEK as it is pushed or handed out in a PULL;
    ``retire`` it when a push replaced or deleted it.  ``key_length``
    selects the reading of L (AMBIGUOUS, digest §8.11) and must match
    the members'.  ``remembered`` bounds the duplicate cache.
    """

    def __init__(
        self,
        *,
        key_length: AckKeyLength = AckKeyLength.PRF_BLOCK,
        grace: float = DEFAULT_GRACE,
        remembered: int = DEFAULT_REMEMBERED,
    ) -> None:
        self.key_length = key_length
        self.grace = grace
        self.accepted = 0
        self.rejected: collections.Counter[AckRejection] = collections.Counter()
        self._sas: dict[bytes, _AckSa] = {}
        self._seen: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._remembered = remembered

    def install(self, kek: KekPolicy, key: Kek) -> None:
        """Accept acks under ``kek`` (with ``key`` its keys) if its SA KEK requests them."""
        if kek.ack is None:
            self._sas[kek.spi] = _AckSa(None, None)
            return
        if kek.ack.type not in KEK_ACK_TYPES:
            raise ValueError(f"KEK {kek.spi.hex()}: KEK_ACK_REQUESTED {kek.ack.type.name} needs LKH, not implemented")
        self._sas[kek.spi] = _AckSa(kek.ack.type, ack_key(kek.ack.type, key.key, kek.spi, self.key_length))

    def retire(self, spi: bytes, now: float) -> None:
        """Keep accepting acks under ``spi`` for ``grace`` seconds more, then forget it."""
        sa = self._sas.get(spi)
        if sa is not None:
            sa.retired_until = now + self.grace

    def receive(self, datagram: bytes, source: Address, now: float) -> AckReceived | AckRejected:
        self._expire(now)
        try:
            received = self._verify(bytes(datagram), source)
        except _Reject as reject:
            self.rejected[reject.reason] += 1
            return AckRejected(reject.reason, reject.text)
        self.accepted += 1
        return received

    def _expire(self, now: float) -> None:
        for spi in [s for s, sa in self._sas.items() if sa.retired_until is not None and sa.retired_until <= now]:
            del self._sas[spi]

    def _verify(self, datagram: bytes, source: Address) -> AckReceived:
        sender = f"from {source[0]}"
        try:
            header = Header.decode(datagram)
        except WireError as err:
            raise _Reject(AckRejection.MALFORMED, f"malformed acknowledgement {sender}: {err}") from None
        if header.exchange != ExchangeType.GROUPKEY_PUSH_ACK:
            exchange = name_of(ExchangeType, header.exchange)
            raise _Reject(AckRejection.MALFORMED, f"{exchange} {sender} is not a GROUPKEY-PUSH-ACK")
        if header.flags != Flags.NONE or header.message_id != 0:
            raise _Reject(
                AckRejection.MALFORMED,
                f"acknowledgement {sender} has flags {header.flags:#04x} and Message ID {header.message_id:#x}; "
                "both must be 0 (RFC 8263 §3.1)",
            )
        spi = header.icookie + header.rcookie
        sa = self._sas.get(spi)
        if sa is None:
            raise _Reject(AckRejection.UNKNOWN_KEK, f"acknowledgement {sender} under unknown KEK {spi.hex()}")
        if sa.ack_type is None or sa.key is None:
            raise _Reject(
                AckRejection.NOT_REQUESTED, f"acknowledgement {sender} under KEK {spi.hex()}, which requests none"
            )
        digest = hashlib.sha256(datagram).digest()
        if digest in self._seen:
            raise _Reject(AckRejection.DUPLICATE, f"duplicate acknowledgement {sender} under KEK {spi.hex()}")
        self._seen[digest] = None
        if len(self._seen) > self._remembered:
            self._seen.popitem(last=False)
        hash_, seq, ident = self._payloads(datagram, sender)
        covered = datagram[HEADER.size + GENERIC_HEADER.size + len(hash_.data) :]  # SEQ | ID as sent
        expected = ack_hash(sa.ack_type, sa.key, seq=covered[:_SEQ_PAYLOAD], id_=covered[_SEQ_PAYLOAD:])
        if not hmac.compare_digest(hash_.data, expected):
            raise _Reject(
                AckRejection.BAD_HASH,
                f"acknowledgement {sender} of SEQ {seq.number} under KEK {spi.hex()} has a bad HASH "
                "(another KEK, or another reading of L?)",
            )
        member = ident.value
        assert isinstance(member, IPv4Address | IPv6Address)
        return AckReceived(spi, seq.number, member, source)

    @staticmethod
    def _payloads(datagram: bytes, sender: str) -> tuple[Hash, SequenceNumber, Identification]:
        """HASH, SEQ and ID in that order, the ID an address with protocol and port 0 (RFC 8263 §3)."""
        try:
            payloads = decode_message(datagram).payloads
        except WireError as err:
            raise _Reject(AckRejection.MALFORMED, f"malformed acknowledgement {sender}: {err}") from None
        if tuple(type(p) for p in payloads) != _LAYOUT:
            names = ", ".join(p.NAME for p in payloads)
            raise _Reject(AckRejection.MALFORMED, f"acknowledgement {sender} carries {names}; it must be HASH, SEQ, ID")
        hash_, seq, ident = payloads
        assert isinstance(hash_, Hash) and isinstance(seq, SequenceNumber) and isinstance(ident, Identification)
        if ident.id_type not in _ADDRESS_IDS or ident.protocol or ident.port:
            raise _Reject(
                AckRejection.MALFORMED,
                f"acknowledgement {sender} identifies the member by {name_of(IdType, ident.id_type)} "
                f"(protocol {ident.protocol}, port {ident.port}); groupvpn expects ID_IPV4_ADDR or ID_IPV6_ADDR "
                "with protocol and port 0",
            )
        return hash_, seq, ident
