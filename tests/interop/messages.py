"""One of every message groupvpn sends, built with the project's wire codec and crypto.

A whole conversation between a group member (GM) and a key server (KS):
Main Mode 1-6 with a real group 14 Diffie-Hellman exchange and real key
derivation, GROUPKEY-PULL 1-4 under that Phase 1 SA (Phase 2 IV rule),
an encrypted DPD notify and IKE SA delete, a GROUPKEY-PUSH encrypted under
the KEK the PULL delivered (and a clear copy, which tshark 4.0 can read),
and the RFC 8263 acknowledgement.  Every message is sealed exactly as the
RFCs say, so an independent decoder given only the Phase 1 cipher key (as
an operator gives Wireshark) can follow Phase 1 and the PULL.

Inputs are those of the digest's worked example (§11.F, §11.G) so the
derived values can be checked against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from ipaddress import IPv4Address, IPv4Network

from tshark import Datagram

from groupvpn.crypto import dh, gdoi, ikev1
from groupvpn.crypto.cbc import ike_cipher, kek_cipher
from groupvpn.crypto.sig import SigningKey, signature_scheme
from groupvpn.wire import numbers as n
from groupvpn.wire.attributes import Attribute
from groupvpn.wire.gdoi import Gap, GroupSa, IpsecTek, KeyDownload, KeyPacket, SaKek, SaTek, SequenceNumber
from groupvpn.wire.ident import TrafficId
from groupvpn.wire.isakmp import (
    Delete,
    Hash,
    Identification,
    KeyExchange,
    Nonce,
    Notify,
    Proposal,
    SecurityAssociation,
    Signature,
    Transform,
    VendorId,
)
from groupvpn.wire.message import Header, Message, Payload, decode_message, encode_each, encode_payloads, first_type

GM = "198.18.0.2"
KS = "198.18.0.1"
REKEY_GROUP = "239.192.18.1"
GROUP_ID = 1234

HASH = n.HashAlgorithm.SHA2_256
CIPHER = ike_cipher(n.EncryptionAlgorithm.AES_CBC)
KEY_SIZE = 16
DH_GROUP = dh.group(n.DhGroup.MODP_2048)
PSK = b"gdoi-test-psk"
ICOOKIE = bytes.fromhex("0102030405060708")
RCOOKIE = bytes.fromhex("1112131415161718")
NI_B = b"\xa0" * 16
NR_B = b"\xb0" * 16
PULL_MID = 0xC0FFEE01
PULL_NI_B = b"\x5a" * 16
PULL_NR_B = b"\x6b" * 16
DPD_MID = 0x0DDBA11
DELETE_MID = 0x5EED5EED

KEK_SPI = bytes.fromhex("a1a2a3a4a5a6a7a8b1b2b3b4b5b6b7b8")
KEK = gdoi.Kek(n.KekAlgorithm.AES, bytes(range(0x40, 0x50)), bytes(range(0x50, 0x60)))
SIG_SCHEME = signature_scheme(n.SigAlgorithm.RSA, n.SigHashAlgorithm.SHA256)
ACK_TYPE = n.KekAckType.KEK_SHA256

TEK_CBC_SPI = bytes.fromhex("12345678")
TEK_GCM_SPI = bytes.fromhex("9abcdef0")
TEK_NEXT_SPI = bytes.fromhex("23456789")


@cache
def signing_key() -> SigningKey:
    """The KS push-signing key (2048-bit RSA; generated once per test run)."""
    return SigningKey.generate(n.SigAlgorithm.RSA)


def phase1_sa(doi: n.DOI) -> SecurityAssociation:
    """The digest §11.F offer: AES-128, SHA2-256, PSK, group 14, 86400 s (DOI 2 there)."""
    attributes = (
        Attribute.tv(n.IkeAttribute.ENCRYPTION_ALGORITHM, n.EncryptionAlgorithm.AES_CBC),
        Attribute.tv(n.IkeAttribute.KEY_LENGTH, 128),
        Attribute.tv(n.IkeAttribute.HASH_ALGORITHM, HASH),
        Attribute.tv(n.IkeAttribute.AUTHENTICATION_METHOD, n.AuthMethod.PRE_SHARED_KEY),
        Attribute.tv(n.IkeAttribute.GROUP_DESCRIPTION, n.DhGroup.MODP_2048),
        Attribute.tv(n.IkeAttribute.LIFE_TYPE, n.LifeType.SECONDS),
        Attribute.lifetime(n.IkeAttribute.LIFE_DURATION, 86400),
    )
    transform = Transform(1, n.IsakmpTransformId.KEY_IKE, attributes)
    return SecurityAssociation((Proposal(1, n.ProtocolId.ISAKMP, (transform,)),), doi=doi)


def sa_kek() -> SaKek:
    attributes = (
        Attribute.tv(n.KekAttribute.KEK_ALGORITHM, n.KekAlgorithm.AES),
        Attribute.tv(n.KekAttribute.KEK_KEY_LENGTH, 128),
        Attribute.lifetime(n.KekAttribute.KEK_KEY_LIFETIME, 86400),
        Attribute.tv(n.KekAttribute.SIG_HASH_ALGORITHM, n.SigHashAlgorithm.SHA256),
        Attribute.tv(n.KekAttribute.SIG_ALGORITHM, n.SigAlgorithm.RSA),
        Attribute.tv(n.KekAttribute.SIG_KEY_LENGTH, 2048),
        Attribute.tv(n.KekAttribute.KEK_ACK_REQUESTED, ACK_TYPE),
    )
    src = TrafficId.of(IPv4Address(KS), n.GDOI_PORT)
    dst = TrafficId.of(IPv4Address(REKEY_GROUP), n.GDOI_PORT)
    return SaKek(17, src, dst, KEK_SPI, attributes)


def gap() -> Gap:
    return Gap(
        (
            Attribute.tv(n.GapAttribute.ACTIVATION_TIME_DELAY, 10),
            Attribute.tv(n.GapAttribute.DEACTIVATION_TIME_DELAY, 30),
        )
    )


def _tek(spi: bytes, transform: n.EspTransform, key_bits: int, auth: n.AuthAlgorithm | None, src: str, dst: str) -> SaTek:
    attributes = [
        Attribute.tv(n.IpsecAttribute.SA_LIFE_TYPE, n.LifeType.SECONDS),
        Attribute.lifetime(n.IpsecAttribute.SA_LIFE_DURATION, 3600),
        Attribute.tv(n.IpsecAttribute.ENCAPSULATION_MODE, n.EncapsulationMode.TUNNEL),
        Attribute.tv(n.IpsecAttribute.KEY_LENGTH, key_bits),
        Attribute.tv(n.IpsecAttribute.ADDRESS_PRESERVATION, n.AddressPreservation.SOURCE_AND_DESTINATION),
        Attribute.tv(n.IpsecAttribute.SA_DIRECTION, n.SaDirection.SYMMETRIC),
    ]
    if auth is not None:
        attributes.insert(3, Attribute.tv(n.IpsecAttribute.AUTHENTICATION_ALGORITHM, auth))
    policy = IpsecTek(
        0, TrafficId.of(IPv4Network(src)), TrafficId.of(IPv4Network(dst)), transform, spi, tuple(attributes)
    )
    return SaTek(n.GdoiProtocol.IPSEC_ESP, policy)


def teks() -> tuple[SaTek, SaTek]:
    """An AES-CBC + HMAC-SHA-256 TEK between two subnets and an AES-GCM TEK to a multicast range."""
    return (
        _tek(TEK_CBC_SPI, n.EspTransform.AES_CBC, 128, n.AuthAlgorithm.HMAC_SHA2_256, "10.1.0.0/16", "10.2.0.0/16"),
        _tek(TEK_GCM_SPI, n.EspTransform.AES_GCM_16, 256, None, "0.0.0.0/0", "239.192.0.0/16"),
    )


def _tek_packet(spi: bytes, cipher_key: bytes, integrity_key: bytes | None) -> KeyPacket:
    attributes = [Attribute.tlv(n.TekKeyAttribute.TEK_ALGORITHM_KEY, cipher_key)]
    if integrity_key is not None:
        attributes.append(Attribute.tlv(n.TekKeyAttribute.TEK_INTEGRITY_KEY, integrity_key))
    return KeyPacket(n.KeyPacketType.TEK, spi, tuple(attributes))


def pull_key_download() -> KeyDownload:
    kek = KeyPacket(
        n.KeyPacketType.KEK,
        KEK_SPI,
        (
            Attribute.tlv(n.KekKeyAttribute.KEK_ALGORITHM_KEY, KEK.material),
            Attribute.tlv(n.KekKeyAttribute.SIG_ALGORITHM_KEY, signing_key().public.spki),
        ),
    )
    return KeyDownload(
        (
            _tek_packet(TEK_CBC_SPI, bytes(range(16)), bytes(range(32, 64))),
            _tek_packet(TEK_GCM_SPI, bytes(range(100, 136)), None),  # AES-256 key | 4-octet salt
            kek,
        )
    )


@dataclass(frozen=True)
class Sent:
    """One message of the conversation: its label, what went on the wire, and its payloads."""

    label: str
    datagram: Datagram
    message: Message  # as decoded from the wire: ciphertext when encrypted
    payloads: tuple[Payload, ...]  # the plaintext payloads we built


@dataclass
class Conversation:
    """The messages in order, plus the keys an operator would hand a decoder."""

    phase1_doi: n.DOI
    phase1_port: int
    sent: list[Sent] = field(default_factory=list)
    cipher_key: bytes = field(default=b"", repr=False)

    def add(self, label: str, src: str, dst: str, sport: int, dport: int, wire: bytes, payloads: Sequence[Payload]) -> None:
        self.sent.append(Sent(label, Datagram(src, dst, sport, dport, wire), decode_message(wire), tuple(payloads)))

    def __getitem__(self, label: str) -> Sent:
        return next(s for s in self.sent if s.label == label)

    @property
    def datagrams(self) -> list[Datagram]:
        return [s.datagram for s in self.sent]

    @property
    def ike_keys(self) -> dict[bytes, bytes]:
        return {ICOOKIE: self.cipher_key}


@dataclass
class _Chain:
    """The running CBC IV of one exchange (RFC 2409 App. B)."""

    key: bytes = field(repr=False)
    iv: bytes

    def seal(self, exchange: int, payloads: Sequence[Payload], message_id: int) -> bytes:
        ciphertext = CIPHER.encrypt(self.key, self.iv, encode_payloads(payloads))
        self.iv = ciphertext[-CIPHER.block_size :]
        return Message.sealed(ICOOKIE, RCOOKIE, exchange, first_type(payloads), ciphertext, message_id=message_id).encode()


def _clear(icookie: bytes, rcookie: bytes, exchange: int, payloads: Sequence[Payload]) -> bytes:
    return Message.build(icookie, rcookie, exchange, payloads).encode()


def _push(payloads: Sequence[Payload], *, encrypt: bool) -> tuple[bytes, list[Payload]]:
    """GROUPKEY-PUSH: SIG over "rekey" | HDR as sent | payloads before SIG, then KEK-encrypted.

    The signed header carries the final flags and on-wire length (digest
    §8.10 AMBIGUOUS, its recommendation); the signature length and the zero
    padding are fixed, so that length is known before signing.
    """
    icookie, rcookie = KEK_SPI[:8], KEK_SPI[8:]
    placeholder = [*payloads, Signature(bytes((signing_key().public.key_bits + 7) // 8))]
    plaintext = encode_payloads(placeholder)
    body_length = len(kek_cipher(KEK.algorithm).pad(plaintext)) if encrypt else len(plaintext)
    flags = n.Flags.ENCRYPTION if encrypt else n.Flags.NONE
    header = Header.make(icookie, rcookie, n.ExchangeType.GROUPKEY_PUSH, first_type(payloads), body_length, flags=flags)
    signed = header.encode() + b"".join(encode_each(placeholder)[:-1])
    full = [*payloads, Signature(signing_key().sign(SIG_SCHEME, signed))]
    if not encrypt:
        return _clear(icookie, rcookie, n.ExchangeType.GROUPKEY_PUSH, full), full
    ciphertext = KEK.encrypt(encode_payloads(full))
    return Message.sealed(icookie, rcookie, n.ExchangeType.GROUPKEY_PUSH, first_type(full), ciphertext).encode(), full


def conversation(
    *, phase1_doi: n.DOI = n.DOI.GDOI, phase1_port: int = n.GDOI_PORT, with_gap: bool = True
) -> Conversation:
    """The whole GM <-> KS exchange.

    ``phase1_doi`` is the Main Mode SA's DOI (RFC 6407 §2.1 says 2; the
    Phase 1 code also speaks 1, and only a DOI 1 Main Mode is decryptable
    by tshark 4.0, which parses every DOI 2 SA in the GDOI form).
    ``phase1_port`` 500 runs Main Mode there and the rest on 848;
    ``with_gap=False`` leaves the GAP out of the PULL's SA.
    """
    conv = Conversation(phase1_doi, phase1_port)
    p1 = phase1_port

    def to_ks(label: str, wire: bytes, payloads: Sequence[Payload], port: int = n.GDOI_PORT) -> None:
        conv.add(label, GM, KS, port, port, wire, payloads)

    def to_gm(label: str, wire: bytes, payloads: Sequence[Payload], port: int = n.GDOI_PORT) -> None:
        conv.add(label, KS, GM, port, port, wire, payloads)

    # Main Mode (RFC 2409 §5.4).
    sa = phase1_sa(phase1_doi)
    dpd = VendorId(n.DPD_VENDOR_ID)
    mm1 = [sa, dpd]
    to_ks("MM1", _clear(ICOOKIE, bytes(8), n.ExchangeType.IDENTITY_PROTECTION, mm1), mm1, p1)
    mm2 = [sa, dpd]
    to_gm("MM2", _clear(ICOOKIE, RCOOKIE, n.ExchangeType.IDENTITY_PROTECTION, mm2), mm2, p1)
    xi = DH_GROUP.keypair(int.from_bytes(b"\x11" * 32, "big"))
    xr = DH_GROUP.keypair(int.from_bytes(b"\x22" * 32, "big"))
    mm3 = [KeyExchange(xi.public_value), Nonce(NI_B)]
    to_ks("MM3", _clear(ICOOKIE, RCOOKIE, n.ExchangeType.IDENTITY_PROTECTION, mm3), mm3, p1)
    mm4 = [KeyExchange(xr.public_value), Nonce(NR_B)]
    to_gm("MM4", _clear(ICOOKIE, RCOOKIE, n.ExchangeType.IDENTITY_PROTECTION, mm4), mm4, p1)

    keys = ikev1.psk_keys(HASH, PSK, NI_B, NR_B, xi.shared_secret(xr.public_value), ICOOKIE, RCOOKIE)
    conv.cipher_key = keys.cipher_key(KEY_SIZE)
    phase1 = _Chain(conv.cipher_key, ikev1.phase1_iv(HASH, xi.public_value, xr.public_value, CIPHER.block_size))
    exchange = {"g_xi": xi.public_value, "g_xr": xr.public_value, "cky_i": ICOOKIE, "cky_r": RCOOKIE, "sai_b": sa.encode_body()}
    id_i = Identification.of(IPv4Address(GM), 17, p1)
    id_r = Identification.of(IPv4Address(KS), 17, p1)
    mm5 = [id_i, Hash(ikev1.hash_i(HASH, keys.skeyid, idii_b=id_i.encode_body(), **exchange))]
    to_ks("MM5", phase1.seal(n.ExchangeType.IDENTITY_PROTECTION, mm5, 0), mm5, p1)
    mm6 = [id_r, Hash(ikev1.hash_r(HASH, keys.skeyid, idir_b=id_r.encode_body(), **exchange))]
    to_gm("MM6", phase1.seal(n.ExchangeType.IDENTITY_PROTECTION, mm6, 0), mm6, p1)
    last_block = phase1.iv

    def phase2(message_id: int) -> _Chain:
        return _Chain(conv.cipher_key, ikev1.phase2_iv(HASH, last_block, message_id, CIPHER.block_size))

    # GROUPKEY-PULL (RFC 6407 §3.2), always on 848.
    pull = phase2(PULL_MID)
    a = keys.skeyid_a
    tail1 = [Nonce(PULL_NI_B), Identification.group(GROUP_ID)]
    ni, id_ = encode_each(tail1)
    pull1 = [Hash(gdoi.pull_hash1(HASH, a, PULL_MID, ni=ni, id_=id_)), *tail1]
    to_ks("PULL1", pull.seal(n.ExchangeType.GROUPKEY_PULL, pull1, PULL_MID), pull1)
    tail2 = [Nonce(PULL_NR_B), GroupSa(sa_kek(), gap() if with_gap else None, teks())]
    nr, group_sa = encode_each(tail2)
    pull2 = [Hash(gdoi.pull_hash2(HASH, a, PULL_MID, ni_b=PULL_NI_B, nr=nr, sa=group_sa)), *tail2]
    to_gm("PULL2", pull.seal(n.ExchangeType.GROUPKEY_PULL, pull2, PULL_MID), pull2)
    pull3 = [Hash(gdoi.pull_hash3(HASH, a, PULL_MID, ni_b=PULL_NI_B, nr_b=PULL_NR_B))]
    to_ks("PULL3", pull.seal(n.ExchangeType.GROUPKEY_PULL, pull3, PULL_MID), pull3)
    tail4 = [SequenceNumber(0), pull_key_download()]
    seq, kd = encode_each(tail4)
    pull4 = [Hash(gdoi.pull_hash4(HASH, a, PULL_MID, ni_b=PULL_NI_B, nr_b=PULL_NR_B, seq=seq, kd=kd)), *tail4]
    to_gm("PULL4", pull.seal(n.ExchangeType.GROUPKEY_PULL, pull4, PULL_MID), pull4)

    # Informational exchanges (RFC 2409 §5.7): DPD R-U-THERE, then the IKE SA delete.
    notify = Notify(n.NotifyType.R_U_THERE, n.DOI.IPSEC, n.ProtocolId.ISAKMP, ICOOKIE + RCOOKIE, (1).to_bytes(4, "big"))
    info = [Hash(ikev1.informational_hash(HASH, a, DPD_MID, notify.encode())), notify]
    to_ks("DPD", phase2(DPD_MID).seal(n.ExchangeType.INFORMATIONAL, info, DPD_MID), info)

    # GROUPKEY-PUSH (RFC 6407 §4): replace the CBC TEK, under the KEK from PULL4, to the rekey group.
    new_tek = _tek(TEK_NEXT_SPI, n.EspTransform.AES_CBC, 128, n.AuthAlgorithm.HMAC_SHA2_256, "10.1.0.0/16", "10.2.0.0/16")
    push = [
        SequenceNumber(1),
        Delete(n.DOI.GDOI, n.GdoiProtocol.IPSEC_ESP, 4, (TEK_CBC_SPI,)),
        GroupSa(teks=(new_tek,)),
        KeyDownload((_tek_packet(TEK_NEXT_SPI, bytes(range(200, 216)), bytes(range(216, 248))),)),
    ]
    for label, encrypt in (("PUSH", True), ("PUSH-CLEAR", False)):
        wire, sent = _push(push, encrypt=encrypt)
        conv.add(label, KS, REKEY_GROUP, n.GDOI_PORT, n.GDOI_PORT, wire, sent)

    # RFC 8263 acknowledgement of the encrypted PUSH: GM -> KS, ports swapped from the PUSH.
    ack_tail = [SequenceNumber(1), Identification.of(IPv4Address(GM))]
    ack_seq, ack_id = encode_each(ack_tail)
    ack_key = gdoi.ack_key(ACK_TYPE, KEK.key, KEK_SPI)
    ack = [Hash(gdoi.ack_hash(ACK_TYPE, ack_key, seq=ack_seq, id_=ack_id)), *ack_tail]
    to_ks("ACK", _clear(KEK_SPI[:8], KEK_SPI[8:], n.ExchangeType.GROUPKEY_PUSH_ACK, ack), ack)

    delete = Delete(phase1_doi, n.ProtocolId.ISAKMP, 16, (ICOOKIE + RCOOKIE,))
    info = [Hash(ikev1.informational_hash(HASH, a, DELETE_MID, delete.encode())), delete]
    to_ks("DELETE", phase2(DELETE_MID).seal(n.ExchangeType.INFORMATIONAL, info, DELETE_MID), info)
    return conv
