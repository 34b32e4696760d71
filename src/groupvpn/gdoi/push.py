"""GROUPKEY-PUSH (RFC 6407 §4), sans-IO: the key server builds it, a member verifies it.

    key server                                          member
    HDR*, SEQ, [D...,] [SA, KD,] SIG   ------>
                                       <------          HDR, HASH, SEQ, ID   (RFC 8263, see ``ack``)

``build_push`` signs and encrypts one rekey message.  A member keeps one
``PushReceiver`` per group, holding its rekey SAs by KEK SPI (the cookie
pair of every PUSH header), and checks each datagram cheapest first
(digest §8.10): cookie lookup, header flags, exact duplicate, decryption
and payload form, SEQ strictly above the last accepted under that KEK,
signature, then the policy.  It installs nothing itself: the caller acts
on ``PushAccepted`` (installs TEKs, ``install``s a new KEK, ``remove``s
deleted ones) and then sends the acknowledgement it carries.

Choices where RFC 6407 is open (digest §8.10, docs/conformance.md):

* the signed header is the one on the wire: Flags 0x01 and the final
  Length including the zero padding, computable before signing because
  the padding and the signature length are fixed;
* every PUSH under a KEK is encrypted with the IV delivered with it;
* SEQ is kept per KEK SPI, and a new KEK's first push carries 1 (§4).

An exact duplicate of a push already accepted is answered with the same
acknowledgement again and nothing else: a key server retransmits when an
acknowledgement was lost (RFC 8263 §6).
"""

from __future__ import annotations

import collections
import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from types import MappingProxyType

from ..crypto.cbc import kek_cipher
from ..crypto.errors import CryptoError
from ..crypto.gdoi import AckKeyLength, Kek
from ..crypto.sig import RsaEncoding, SignatureScheme, SigningKey, VerifyingKey, signature_scheme
from ..ike.sa import Address
from ..wire.errors import WireError
from ..wire.gdoi import KEK_SPI_SIZE, GroupSa, KeyDownload, SequenceNumber
from ..wire.isakmp import GENERIC_HEADER, Delete, Signature
from ..wire.message import HEADER, Header, Message, Payload, decode_payloads, encode_each, encode_payloads
from ..wire.numbers import DOI, ExchangeType, Flags, GdoiProtocol, KeyPacketType, name_of
from .ack import KEK_ACK_TYPES, build_ack
from .errors import PolicyError
from .policy import AckRequest, GroupPolicy, KekKeys, KekPolicy
from .pull import LastPush

MAX_SEQ = 0xFFFFFFFF
DEFAULT_REMEMBERED = 64
_DELETE_SPI_SIZES = {GdoiProtocol.KEK: KEK_SPI_SIZE, GdoiProtocol.IPSEC_ESP: 4, GdoiProtocol.IPSEC_AH: 4}
_LAYOUT = "a GROUPKEY-PUSH is SEQ, [D...,] [SA, KD,] SIG (RFC 6407 §4)"


class PushFormError(ValueError):
    """Payloads that do not make a GROUPKEY-PUSH."""


def _check_delete(delete: Delete) -> None:
    """DOI 2, a GDOI protocol (0 = the KEK), SPIs of its size (RFC 6407 §5.9)."""
    if delete.doi != DOI.GDOI:
        raise PushFormError(f"a GROUPKEY-PUSH Delete is in DOI 2 (GDOI), not {delete.doi}")
    size = _DELETE_SPI_SIZES.get(delete.protocol)
    if size is None:
        raise PushFormError(f"Delete of protocol {delete.protocol}; GDOI deletes the KEK (0), ESP (1) or AH (2)")
    if delete.spi_size != size or not delete.spis:
        raise PushFormError(
            f"Delete of {name_of(GdoiProtocol, delete.protocol)} needs one or more {size}-octet SPIs, "
            f"got {len(delete.spis)} of {delete.spi_size}"
        )


@dataclass(frozen=True)
class PushPayloads:
    """What one GROUPKEY-PUSH carries besides its signature.

    A KD only travels with its SA and vice versa (§4.3); SID key packets
    are member-specific and never pushed (§5.6.4).
    """

    seq: int
    deletes: tuple[Delete, ...] = ()
    group_sa: GroupSa | None = None
    key_download: KeyDownload | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.seq <= MAX_SEQ:
            raise PushFormError(f"SEQ {self.seq}; a GROUPKEY-PUSH carries 1..{MAX_SEQ} (0 is the PULL's)")
        for delete in self.deletes:
            _check_delete(delete)
        if (self.group_sa is None) != (self.key_download is None):
            raise PushFormError(f"an SA without its KD or a KD without its SA; {_LAYOUT}")
        if self.key_download is not None and any(p.kd_type == KeyPacketType.SID for p in self.key_download.packets):
            raise PushFormError("SID key packets are member-specific and never pushed (RFC 6407 §5.6.4)")

    @property
    def new_kek_spi(self) -> bytes | None:
        """The SPI of the KEK this push delivers, if any."""
        return None if self.group_sa is None or self.group_sa.kek is None else self.group_sa.kek.spi

    def to_wire(self) -> tuple[Payload, ...]:
        tail: tuple[Payload, ...] = ()
        if self.group_sa is not None and self.key_download is not None:
            tail = (self.group_sa, self.key_download)
        return (SequenceNumber(self.seq), *self.deletes, *tail)

    @classmethod
    def from_wire(cls, payloads: Sequence[Payload]) -> PushPayloads:
        """The payloads between HDR and SIG, in the order §4 prescribes."""
        end = 1
        while end < len(payloads) and isinstance(payloads[end], Delete):
            end += 1
        seq, deletes, rest = payloads[:1], payloads[1:end], payloads[end:]
        sa, kd = rest if len(rest) == 2 else (None, None)
        if (
            not (seq and isinstance(seq[0], SequenceNumber))
            or len(rest) not in (0, 2)
            or (rest and not (isinstance(sa, GroupSa) and isinstance(kd, KeyDownload)))
        ):
            names = ", ".join(p.NAME for p in payloads)
            raise PushFormError(f"payloads {names or 'none'} before SIG; {_LAYOUT}")
        return cls(seq[0].number, tuple(deletes), sa, kd)  # type: ignore[arg-type]


def seal_push(kek: Kek, kek_spi: bytes, payloads: Sequence[Payload], key: SigningKey, scheme: SignatureScheme) -> bytes:
    """Sign ``payloads`` as they stand and encrypt them under ``kek``: the framing of every push.

    ``build_push`` is the checked entry point; this one also frames what
    no conforming key server sends, which is what tests of a receiver need.
    """
    if len(kek_spi) != KEK_SPI_SIZE:
        raise ValueError(f"a KEK SPI is {KEK_SPI_SIZE} octets (CKY-I | CKY-R), got {len(kek_spi)}")
    icookie, rcookie = kek_spi[:8], kek_spi[8:]
    placeholder = (*payloads, Signature(bytes(key.public.signature_size(scheme))))
    parts = encode_each(placeholder)
    length = sum(len(p) for p in parts)
    padded = length + -length % kek_cipher(kek.algorithm).block_size
    first = placeholder[0].payload_type
    header = Header.make(icookie, rcookie, ExchangeType.GROUPKEY_PUSH, first, padded, flags=Flags.ENCRYPTION)
    signature = Signature(key.sign(scheme, header.encode() + b"".join(parts[:-1])))
    return Message(header, (), kek.encrypt(encode_payloads((*payloads, signature)))).encode()


def build_push(
    kek: Kek, kek_spi: bytes, payloads: PushPayloads, signing_key: SigningKey, scheme: SignatureScheme
) -> bytes:
    """The GROUPKEY-PUSH carrying ``payloads`` under the current KEK ``kek`` (cookies = ``kek_spi``).

    ``scheme`` is the SA KEK's SIG_ALGORITHM/SIG_HASH_ALGORITHM and
    ``signing_key`` the key whose public half the members got in
    SIG_ALGORITHM_KEY.  A new KEK needs a new cookie pair (§4).
    """
    if payloads.new_kek_spi == kek_spi:
        raise PushFormError(f"the new KEK reuses SPI {kek_spi.hex()}; a new KEK needs a new cookie pair (RFC 6407 §4)")
    return seal_push(kek, kek_spi, payloads.to_wire(), signing_key, scheme)


# -- member ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RekeySa:
    """One rekey SA a member holds: the KEK, how pushes under it are signed, and replay state.

    ``seq`` is the last accepted sequence number (seeded from PULL
    message 4), ``accepted_at`` when the last push under it was accepted.
    """

    spi: bytes
    kek: Kek
    verifying_key: VerifyingKey = field(repr=False)
    scheme: SignatureScheme
    ack: AckRequest | None
    seq: int = 0
    accepted_at: float | None = None

    @property
    def label(self) -> str:
        return f"KEK {self.spi.hex()}"


@dataclass(frozen=True)
class PushAccepted:
    """An authentic, fresh push under ``kek_spi`` from ``source``.

    ``policy`` is its SA and KD checked like a registration's (None when
    it carries only deletes).  Install it, then send ``datagram_for_ack``
    (if any) back to ``source`` (RFC 8263 §3, §4: after processing, even
    when the push deleted the KEK that protected it).  ``ack_requested``
    is the request that applied: from the push's own SA KEK if it has
    one, else from the rekey SA it came under.
    """

    kek_spi: bytes
    payloads: PushPayloads
    policy: GroupPolicy | None
    ack_requested: AckRequest | None
    datagram_for_ack: bytes | None
    source: Address


class PushRejection(enum.Enum):
    MALFORMED = "malformed"
    UNKNOWN_KEK = "unknown KEK"
    BAD_HEADER = "bad header"
    DUPLICATE = "duplicate"
    UNREADABLE = "unreadable"
    BAD_PAYLOADS = "bad payloads"
    REPLAY = "replay"
    BAD_SIGNATURE = "bad signature"
    POLICY = "policy rejected"


@dataclass(frozen=True)
class PushRejected:
    """A push that was dropped; ``text`` is the operator-facing sentence.

    ``datagram_for_ack`` is only set for a duplicate of an accepted push:
    the acknowledgement that went out for it, to send again.
    """

    reason: PushRejection
    text: str
    datagram_for_ack: bytes | None = None


class _Reject(Exception):
    def __init__(self, reason: PushRejection, text: str, ack: bytes | None = None) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text
        self.ack = ack


@dataclass(frozen=True, slots=True)
class _Seen:
    """How a datagram already processed under a rekey SA ended."""

    outcome: str
    ack: bytes | None


class PushReceiver:
    """A member's GROUPKEY-PUSH state for group ``group_id``: its rekey SAs and replay protection.

    ``member_address`` is the address of the member's GROUPKEY-PULL; its
    acknowledgements carry it as their ID (RFC 8263 §3.4).  ``ack_key_length``
    selects the reading of L (AMBIGUOUS, digest §8.11) and must match the
    key server's; ``rsa_encoding`` how SIG_ALG_RSA signatures are padded
    (the RFC's DigestInfo, or the bare hash of Cisco-derived key servers,
    digest §8.10).  ``remembered`` bounds the duplicate cache per rekey SA.
    """

    def __init__(
        self,
        group_id: int,
        member_address: IPv4Address | IPv6Address,
        *,
        ack_key_length: AckKeyLength = AckKeyLength.PRF_BLOCK,
        rsa_encoding: RsaEncoding = RsaEncoding.DIGEST_INFO,
        remembered: int = DEFAULT_REMEMBERED,
    ) -> None:
        self.group_id = group_id
        self.member_address = member_address
        self.ack_key_length = ack_key_length
        self.rsa_encoding = rsa_encoding
        self.accepted = 0
        self.rejected: collections.Counter[PushRejection] = collections.Counter()
        self.last_push: LastPush | None = None
        self._sas: dict[bytes, RekeySa] = {}
        self._seen: dict[bytes, collections.OrderedDict[bytes, _Seen]] = {}
        self._remembered = remembered

    @property
    def rekey_sas(self) -> Mapping[bytes, RekeySa]:
        """The installed rekey SAs by KEK SPI (read-only)."""
        return MappingProxyType(self._sas)

    def install(self, kek: KekPolicy, keys: KekKeys, seq: int = 0) -> RekeySa:
        """Hold the rekey SA ``kek`` with ``keys``; pushes under it must carry SEQ above ``seq``.

        ``seq`` is PULL message 4's SEQ for a registration and 0 for a KEK
        a push delivered (its first push carries 1).  Installing an SPI
        again replaces it and its replay state.
        """
        if not 0 <= seq <= MAX_SEQ:
            raise ValueError(f"SEQ {seq} does not fit 4 octets")
        scheme = signature_scheme(kek.sig_algorithm, kek.sig_hash, self.rsa_encoding)
        sa = RekeySa(kek.spi, keys.kek, keys.verifying_key, scheme, kek.ack, seq)
        self._sas[kek.spi] = sa
        self._seen[kek.spi] = collections.OrderedDict()
        return sa

    def remove(self, spi: bytes) -> None:
        """Forget a rekey SA (deleted, expired or replaced); its pushes are unknown from now on."""
        self._sas.pop(spi, None)
        self._seen.pop(spi, None)

    def receive(self, datagram: bytes, source: Address, now: float) -> PushAccepted | PushRejected:
        datagram = bytes(datagram)
        try:
            sa, header, digest = self._admit(datagram, source)
        except _Reject as reject:
            return self._rejected(reject)
        try:
            accepted = self._open(sa, header, datagram, source, now)
        except _Reject as reject:
            self._remember(sa.spi, digest, _Seen(f"rejected earlier: {reject.text}", None))
            return self._rejected(reject)
        self._remember(sa.spi, digest, _Seen(f"accepted with SEQ {accepted.payloads.seq}", accepted.datagram_for_ack))
        self.accepted += 1
        return accepted

    def _rejected(self, reject: _Reject) -> PushRejected:
        self.rejected[reject.reason] += 1
        return PushRejected(reject.reason, reject.text, reject.ack)

    def _remember(self, spi: bytes, digest: bytes, seen: _Seen) -> None:
        cache = self._seen.get(spi)
        if cache is not None:
            cache[digest] = seen
            if len(cache) > self._remembered:
                cache.popitem(last=False)

    def _admit(self, datagram: bytes, source: Address) -> tuple[RekeySa, Header, bytes]:
        """Header checks, cookie lookup and the duplicate cache: no crypto yet."""
        sender = f"from {source[0]}"
        try:
            header = Header.decode(datagram)
        except WireError as err:
            raise _Reject(PushRejection.MALFORMED, f"malformed push {sender}: {err}") from None
        if header.length != len(datagram):
            raise _Reject(
                PushRejection.MALFORMED,
                f"malformed push {sender}: header Length {header.length} but {len(datagram)} octets arrived",
            )
        if header.exchange != ExchangeType.GROUPKEY_PUSH:
            exchange = name_of(ExchangeType, header.exchange)
            raise _Reject(PushRejection.MALFORMED, f"{exchange} {sender} is not a GROUPKEY-PUSH")
        spi = header.icookie + header.rcookie
        sa = self._sas.get(spi)
        if sa is None:
            raise _Reject(
                PushRejection.UNKNOWN_KEK, f"push {sender} under unknown KEK {spi.hex()} (group {self.group_id})"
            )
        if header.flags != Flags.ENCRYPTION or header.message_id != 0:
            raise _Reject(
                PushRejection.BAD_HEADER,
                f"push {sender} under {sa.label} has flags {header.flags:#04x} and Message ID "
                f"{header.message_id:#x}; a GROUPKEY-PUSH has exactly the E flag (0x01) and Message ID 0 "
                "(RFC 6407 §4.2)",
            )
        digest = hashlib.sha256(datagram).digest()
        seen = self._seen[spi].get(digest)
        if seen is not None:
            text = f"duplicate push {sender} under {sa.label} ({seen.outcome})"
            raise _Reject(PushRejection.DUPLICATE, text, seen.ack)
        return sa, header, digest

    def _open(self, sa: RekeySa, header: Header, datagram: bytes, source: Address, now: float) -> PushAccepted:
        """Decrypt, check form, SEQ and signature, read the policy; record the SEQ."""
        sender = f"from {source[0]}"
        try:
            plaintext = sa.kek.decrypt(datagram[HEADER.size :])
            payloads, padding = decode_payloads(header.next_payload, plaintext, ExchangeType.GROUPKEY_PUSH)
        except (CryptoError, WireError) as err:
            raise _Reject(
                PushRejection.UNREADABLE,
                f"push {sender} under {sa.label} does not decrypt to a payload chain "
                f"(another KEK, tampered or malformed): {err}",
            ) from None
        *body, signature = payloads or (None,)
        try:
            if not isinstance(signature, Signature):
                raise PushFormError(f"the last payload is not SIG; {_LAYOUT}")
            content = PushPayloads.from_wire(body)  # type: ignore[arg-type]
            if content.new_kek_spi == sa.spi:
                raise PushFormError("the new KEK reuses the SPI of the KEK protecting it (RFC 6407 §4)")
        except PushFormError as err:
            raise _Reject(PushRejection.BAD_PAYLOADS, f"push {sender} under {sa.label}: {err}") from None
        if content.seq <= sa.seq:
            raise _Reject(
                PushRejection.REPLAY,
                f"replayed push: SEQ {content.seq} <= last accepted {sa.seq} for {sa.label} ({sender})",
            )
        signed_end = len(plaintext) - len(padding) - GENERIC_HEADER.size - len(signature.data)
        try:
            sa.verifying_key.verify(sa.scheme, datagram[: HEADER.size] + plaintext[:signed_end], signature.data)
        except CryptoError as err:
            raise _Reject(
                PushRejection.BAD_SIGNATURE,
                f"push signature invalid (signed by another key?): SEQ {content.seq} under {sa.label} "
                f"{sender}: {err}",
            ) from None
        policy = None
        if content.group_sa is not None and content.key_download is not None:
            try:
                policy = GroupPolicy.from_wire(self.group_id, content.group_sa, content.key_download)
            except PolicyError as err:
                raise _Reject(
                    PushRejection.POLICY,
                    f"push SEQ {content.seq} under {sa.label} {sender}: group {self.group_id} policy rejected: "
                    f"{err.reason}",
                ) from None
        self._sas[sa.spi] = replace(sa, seq=content.seq, accepted_at=now)
        self.last_push = LastPush(sa.spi, content.seq)
        request = policy.kek.ack if policy is not None and policy.kek is not None else sa.ack
        ack = None
        if request is not None and request.type in KEK_ACK_TYPES:
            ack = build_ack(sa.spi, sa.kek, request.type, content.seq, self.member_address, self.ack_key_length)
        return PushAccepted(sa.spi, content, policy, request, ack, source)
