"""One of every message groupvpn sends, in one conversation between a group member and a key server.

Main Mode 1-6, the DPD R-U-THERE / R-U-THERE-ACK and the IKE SA delete come
from the project's own sans-IO Phase 1 initiator and responder talking to
each other in memory (real group 14 Diffie-Hellman, real key derivation,
deterministic randomness).  GROUPKEY-PULL 1-4 under that IKE SA (Phase 2
IV rule) are built here from the wire codec and crypto exactly as RFC 6407
says, with fixed nonces so the capture is reproducible.  The GROUPKEY-PUSH
under the KEK the PULL delivered comes from ``gdoi.push.build_push``; the
member's ``PushReceiver``, holding that KEK, accepts it and produces the
RFC 8263 acknowledgement.  A clear copy of the PUSH (same payloads, E flag
off) is added because tshark 4.0 cannot decrypt a PUSH.  An independent
decoder given only the Phase 1 cipher key (as an operator gives Wireshark)
can follow Phase 1 and the PULL.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from ipaddress import IPv4Address, IPv4Network

from tshark import Datagram

from groupvpn.crypto import gdoi, ikev1
from groupvpn.crypto.sig import SigningKey, signature_scheme
from groupvpn.gdoi import GroupPolicy
from groupvpn.gdoi.push import PushAccepted, PushPayloads, PushReceiver, build_push
from groupvpn.ike.initiator import Phase1Initiator
from groupvpn.ike.proposals import Suite
from groupvpn.ike.psk import PreSharedKey, PskStore
from groupvpn.ike.responder import Phase1Responder
from groupvpn.ike.sa import CbcChain, IkeSa
from groupvpn.wire import numbers as n
from groupvpn.wire.attributes import Attribute
from groupvpn.wire.gdoi import Gap, GroupSa, IpsecTek, KeyDownload, KeyPacket, SaKek, SaTek, SequenceNumber
from groupvpn.wire.ident import TrafficId
from groupvpn.wire.isakmp import Delete, Hash, Identification, KeyExchange, Nonce
from groupvpn.wire.message import Message, Payload, decode_message, encode_each

GM = "198.18.0.2"
KS = "198.18.0.1"
REKEY_GROUP = "239.192.18.1"
GROUP_ID = 1234
NOW = 1000.0

SUITE = Suite.parse("aes128-sha256-modp2048")
CIPHER = SUITE.cipher
PSK = PreSharedKey(b"lab pre-shared key, 36 characters ..")
MAIN_MODE = ("MM1", "MM2", "MM3", "MM4", "MM5", "MM6")
PULL_MID = 0xC0FFEE01
PULL_NI_B = b"\x5a" * 16
PULL_NR_B = b"\x6b" * 16

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
    payloads: tuple[Payload, ...]  # plaintext: as built here, or read back from our Phase 1 code's datagrams


@dataclass
class Conversation:
    """The messages in order, plus the keys an operator would hand a decoder."""

    phase1_doi: n.DOI
    phase1_port: int
    sent: list[Sent] = field(default_factory=list)
    ike_sa: IkeSa | None = field(default=None, repr=False)

    def add(self, label: str, src: str, dst: str, sport: int, dport: int, wire: bytes, payloads: Sequence[Payload]) -> None:
        self.sent.append(Sent(label, Datagram(src, dst, sport, dport, wire), decode_message(wire), tuple(payloads)))

    def __getitem__(self, label: str) -> Sent:
        return next(s for s in self.sent if s.label == label)

    @property
    def datagrams(self) -> list[Datagram]:
        return [s.datagram for s in self.sent]

    @property
    def ike_keys(self) -> dict[bytes, bytes]:
        """What an operator gives a decoder: initiator cookie -> Phase 1 cipher key."""
        assert self.ike_sa is not None
        return {self.ike_sa.icookie: self.ike_sa.cipher_key}


def _member_push_receiver() -> PushReceiver:
    """The group member after PULL4: the KEK and signing key it delivered, SEQ 0."""
    policy = GroupPolicy.from_wire(GROUP_ID, GroupSa(sa_kek(), gap(), teks()), pull_key_download())
    assert policy.kek is not None and policy.kek_keys is not None
    receiver = PushReceiver(GROUP_ID, IPv4Address(GM))
    receiver.install(policy.kek, policy.kek_keys, seq=0)
    return receiver


def _main_mode(conv: Conversation, doi: n.DOI, port: int) -> tuple[Phase1Initiator, Phase1Responder]:
    """Run our initiator against our responder and record the six messages."""
    identity = Identification.of(IPv4Address(GM), 17, port)
    initiator = Phase1Initiator((KS, port), PSK, [SUITE], identity, doi=doi, rng=random.Random("GM").randbytes)
    responder = Phase1Responder(
        PskStore.single(PSK), [SUITE], Identification.of(IPv4Address(KS), 17, port), rng=random.Random("KS").randbytes
    )
    out = initiator.start(NOW)
    for i, label in enumerate(MAIN_MODE):
        (datagram,) = out.datagrams
        if i % 2 == 0:
            conv.add(label, GM, KS, port, port, datagram.data, ())
            out = responder.receive(datagram.data, (GM, port), NOW)
        else:
            conv.add(label, KS, GM, port, port, datagram.data, ())
            out = initiator.receive(datagram.data, (KS, port), NOW)
    assert initiator.sa is not None and not out.datagrams, "Main Mode did not complete"
    conv.ike_sa = initiator.sa
    # Read the encrypted messages' payloads back with the Phase 1 IV rule (RFC 2409 App. B).
    g_xi, g_xr = (next(p.data for p in conv[label].message.payloads if isinstance(p, KeyExchange)) for label in ("MM3", "MM4"))
    chain = CbcChain(CIPHER, conv.ike_sa.cipher_key, ikev1.phase1_iv(SUITE.hash, g_xi, g_xr, CIPHER.block_size))
    for index, sent in enumerate(conv.sent):
        payloads = sent.message.payloads
        if sent.message.encrypted:
            payloads = chain.open(sent.message)
            chain.advance(sent.message)
        conv.sent[index] = replace(sent, payloads=payloads)
    return initiator, responder


def _informational(conv: Conversation, label: str, src: str, dst: str, wire: bytes) -> None:
    assert conv.ike_sa is not None
    message = decode_message(wire)
    port = conv.phase1_port
    conv.add(label, src, dst, port, port, wire, conv.ike_sa.exchange(message.header.message_id).open(message))


def conversation(
    *, phase1_doi: n.DOI = n.DOI.GDOI, phase1_port: int = n.GDOI_PORT, with_gap: bool = True
) -> Conversation:
    """The whole GM <-> KS exchange.

    ``phase1_doi`` is the Main Mode SA's DOI (RFC 6407 §2.1 says 2; the
    Phase 1 code also speaks 1, and only a DOI 1 Main Mode is decryptable
    by tshark 4.0, which parses every DOI 2 SA in the GDOI form).
    ``phase1_port`` 500 runs Main Mode and the informationals there and the
    GDOI exchanges on 848; ``with_gap=False`` leaves the GAP out of the PULL's SA.
    """
    conv = Conversation(phase1_doi, phase1_port)
    initiator, responder = _main_mode(conv, phase1_doi, phase1_port)
    sa = conv.ike_sa
    assert sa is not None

    def to_ks(label: str, wire: bytes, payloads: Sequence[Payload]) -> None:
        conv.add(label, GM, KS, n.GDOI_PORT, n.GDOI_PORT, wire, payloads)

    def to_gm(label: str, wire: bytes, payloads: Sequence[Payload]) -> None:
        conv.add(label, KS, GM, n.GDOI_PORT, n.GDOI_PORT, wire, payloads)

    # GROUPKEY-PULL (RFC 6407 §3.2) under the IKE SA, one CBC chain for its Message ID.
    pull = sa.exchange(PULL_MID)
    h, a, cookies = sa.hash_algorithm, sa.skeyid_a, (sa.icookie, sa.rcookie)

    def seal(payloads: Sequence[Payload]) -> bytes:
        return pull.seal(*cookies, n.ExchangeType.GROUPKEY_PULL, payloads, PULL_MID)

    tail1 = [Nonce(PULL_NI_B), Identification.group(GROUP_ID)]
    ni, id_ = encode_each(tail1)
    pull1 = [Hash(gdoi.pull_hash1(h, a, PULL_MID, ni=ni, id_=id_)), *tail1]
    to_ks("PULL1", seal(pull1), pull1)
    tail2 = [Nonce(PULL_NR_B), GroupSa(sa_kek(), gap() if with_gap else None, teks())]
    nr, group_sa = encode_each(tail2)
    pull2 = [Hash(gdoi.pull_hash2(h, a, PULL_MID, ni_b=PULL_NI_B, nr=nr, sa=group_sa)), *tail2]
    to_gm("PULL2", seal(pull2), pull2)
    pull3 = [Hash(gdoi.pull_hash3(h, a, PULL_MID, ni_b=PULL_NI_B, nr_b=PULL_NR_B))]
    to_ks("PULL3", seal(pull3), pull3)
    tail4 = [SequenceNumber(0), pull_key_download()]
    seq, kd = encode_each(tail4)
    pull4 = [Hash(gdoi.pull_hash4(h, a, PULL_MID, ni_b=PULL_NI_B, nr_b=PULL_NR_B, seq=seq, kd=kd)), *tail4]
    to_gm("PULL4", seal(pull4), pull4)

    # DPD (RFC 3706) from our Phase 1 code: R-U-THERE and the responder's ACK.
    (probe,) = initiator.probe(NOW).datagrams
    _informational(conv, "DPD", GM, KS, probe.data)
    (ack,) = responder.receive(probe.data, (GM, phase1_port), NOW).datagrams
    _informational(conv, "DPD-ACK", KS, GM, ack.data)
    initiator.receive(ack.data, (KS, phase1_port), NOW)

    # GROUPKEY-PUSH (RFC 6407 §4): replace the CBC TEK, under the KEK from PULL4, to the rekey group.
    new_tek = _tek(TEK_NEXT_SPI, n.EspTransform.AES_CBC, 128, n.AuthAlgorithm.HMAC_SHA2_256, "10.1.0.0/16", "10.2.0.0/16")
    content = PushPayloads(
        1,
        deletes=(Delete(n.DOI.GDOI, n.GdoiProtocol.IPSEC_ESP, 4, (TEK_CBC_SPI,)),),
        group_sa=GroupSa(teks=(new_tek,)),
        key_download=KeyDownload((_tek_packet(TEK_NEXT_SPI, bytes(range(200, 216)), bytes(range(216, 248))),)),
    )
    push = build_push(KEK, KEK_SPI, content, signing_key(), SIG_SCHEME)
    sealed = decode_message(push)
    plaintext, _padding = sealed.decode_plaintext(KEK.decrypt(sealed.ciphertext))
    conv.add("PUSH", KS, REKEY_GROUP, n.GDOI_PORT, n.GDOI_PORT, push, plaintext)
    # The same payloads in clear for tshark (its SIG is the encrypted PUSH's, made over the E-flag header).
    clear = Message.build(KEK_SPI[:8], KEK_SPI[8:], n.ExchangeType.GROUPKEY_PUSH, plaintext).encode()
    conv.add("PUSH-CLEAR", KS, REKEY_GROUP, n.GDOI_PORT, n.GDOI_PORT, clear, plaintext)

    # The member accepts the PUSH and acknowledges it (RFC 8263): GM -> KS, ports swapped from the PUSH.
    accepted = _member_push_receiver().receive(push, (KS, n.GDOI_PORT), NOW)
    assert isinstance(accepted, PushAccepted) and accepted.datagram_for_ack is not None, accepted
    to_ks("ACK", accepted.datagram_for_ack, decode_message(accepted.datagram_for_ack).payloads)

    (delete,) = initiator.delete(NOW).datagrams
    _informational(conv, "DELETE", GM, KS, delete.data)
    return conv
