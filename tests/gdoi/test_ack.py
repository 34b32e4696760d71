"""RFC 8263 acknowledgements: the member's message against the digest's vector, the key server's checks."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

import pytest

from gdoi_support import kek_policy
from groupvpn.crypto.gdoi import AckKeyLength, Kek
from groupvpn.gdoi import AckRequest
from groupvpn.gdoi.ack import AckReceived, AckRejected, AckRejection, AckVerifier, build_ack
from groupvpn.wire.gdoi import SequenceNumber
from groupvpn.wire.isakmp import Hash, Identification
from groupvpn.wire.message import HEADER, Header, Message, Payload, decode_message
from groupvpn.wire.numbers import ExchangeType, Flags, KekAckType, KekAlgorithm, PayloadType

# Digest §11.H: KEK cipher key 00..0f, SPI a1..a8 b1..b8, SEQ 1, member 192.0.2.10.
SPI = bytes.fromhex("a1a2a3a4a5a6a7a8b1b2b3b4b5b6b7b8")
KEK = Kek(KekAlgorithm.AES, bytes(range(0x40, 0x50)), bytes(range(16)))
MEMBER = ip_address("192.0.2.10")
FROM = ("192.0.2.10", 848)
NOW = 50.0
HASHES = {
    AckKeyLength.PRF_BLOCK: "fa1b3e1c3f0cd2caee696c3ce571371c79a1449a5dbcaf6f105c3b0370761591",
    AckKeyLength.PRF_OUTPUT: "72052bd50921ab54e2673a86e4a3d84e4b3b213a06e37a6e60dcb8da872590c4",
}
POLICY = kek_policy(spi=SPI, ack=AckRequest(KekAckType.KEK_SHA256))


def verifier(**kwargs: object) -> AckVerifier:
    server = AckVerifier(**kwargs)  # type: ignore[arg-type]
    server.install(POLICY, KEK)
    return server


def ack(seq: int = 1, member=MEMBER, length: AckKeyLength = AckKeyLength.PRF_BLOCK) -> bytes:
    return build_ack(SPI, KEK, KekAckType.KEK_SHA256, seq, member, length)


def message(*payloads: Payload) -> bytes:
    return Message.build(SPI[:8], SPI[8:], ExchangeType.GROUPKEY_PUSH_ACK, payloads).encode()


def rejected(server: AckVerifier, datagram: bytes, reason: AckRejection, now: float = NOW) -> str:
    result = server.receive(datagram, FROM, now)
    assert isinstance(result, AckRejected) and result.reason is reason, result
    return result.text


@pytest.mark.parametrize("length", list(AckKeyLength))
def test_the_ack_matches_the_digest_vector(length: AckKeyLength) -> None:
    datagram = ack(length=length)
    header = Header.decode(datagram)
    assert (header.icookie + header.rcookie, header.next_payload) == (SPI, PayloadType.HASH)
    assert (header.exchange, header.flags, header.message_id) == (ExchangeType.GROUPKEY_PUSH_ACK, Flags.NONE, 0)
    assert header.length == len(datagram) == HEADER.size + 4 + 32 + 8 + 12
    body = datagram[HEADER.size :]
    assert body[:4] == bytes.fromhex("12000024") and body[4:36].hex() == HASHES[length]  # next SEQ (18), 36 octets
    assert body[36:].hex() == "0500000800000001" + "0000000c01000000c000020a"


def test_sha512_acks_carry_the_full_prf_output() -> None:
    datagram = build_ack(SPI, KEK, KekAckType.KEK_SHA512, 3, MEMBER)
    hash_ = decode_message(datagram).payloads[0]
    assert isinstance(hash_, Hash) and len(hash_.data) == 64
    server = AckVerifier()
    server.install(replace(POLICY, ack=AckRequest(KekAckType.KEK_SHA512, legacy=True)), KEK)
    assert server.receive(datagram, FROM, NOW) == AckReceived(SPI, 3, MEMBER, FROM)


@pytest.mark.parametrize("length", list(AckKeyLength))
def test_the_key_server_accepts_a_good_ack_once(length: AckKeyLength) -> None:
    server = verifier(key_length=length)
    datagram = ack(5, length=length)
    assert server.receive(datagram, FROM, NOW) == AckReceived(SPI, 5, MEMBER, FROM)
    text = rejected(server, datagram, AckRejection.DUPLICATE)
    assert text == f"duplicate acknowledgement from 192.0.2.10 under KEK {SPI.hex()}"
    assert server.accepted == 1 and server.rejected == {AckRejection.DUPLICATE: 1}


def test_ipv6_members() -> None:
    member = ip_address("2001:db8::10")
    datagram = ack(2, member)
    ident = decode_message(datagram).payloads[2]
    assert isinstance(ident, Identification) and ident.id_type == 5  # ID_IPV6_ADDR
    source = ("2001:db8::10", 848)
    assert verifier().receive(datagram, source, NOW) == AckReceived(SPI, 2, member, source)


def test_the_id_names_the_member_whatever_address_the_ack_came_from() -> None:
    """RFC 8263 §3.4: the ID is the member's PULL address; the UDP source (NAT, multi-homing) is reported apart."""
    natted = ("203.0.113.7", 4500)
    assert verifier().receive(ack(4), natted, NOW) == AckReceived(SPI, 4, MEMBER, natted)


def test_a_wrong_hash() -> None:
    datagram = bytearray(ack())
    datagram[HEADER.size + 4] ^= 1
    text = rejected(verifier(), bytes(datagram), AckRejection.BAD_HASH)
    assert text == (
        f"acknowledgement from 192.0.2.10 of SEQ 1 under KEK {SPI.hex()} has a bad HASH "
        "(another KEK, or another reading of L?)"
    )
    other = Kek(KekAlgorithm.AES, KEK.iv, bytes(16))
    rejected(verifier(), build_ack(SPI, other, KekAckType.KEK_SHA256, 1, MEMBER), AckRejection.BAD_HASH)
    # SEQ or ID changed after hashing: the HASH covers both.
    hash_, seq, ident = decode_message(ack()).payloads
    for payloads in ((hash_, seq, Identification.of(ip_address("192.0.2.99"))), (hash_, SequenceNumber(9), ident)):
        rejected(verifier(), message(*payloads), AckRejection.BAD_HASH)


def test_an_unknown_kek_and_a_kek_that_requests_no_acks() -> None:
    server = verifier()
    unknown = build_ack(bytes(16), KEK, KekAckType.KEK_SHA256, 1, MEMBER)
    text = rejected(server, unknown, AckRejection.UNKNOWN_KEK)
    assert text == f"acknowledgement from 192.0.2.10 under unknown KEK {bytes(16).hex()}"
    server.install(replace(POLICY, ack=None), KEK)
    text = rejected(server, ack(), AckRejection.NOT_REQUESTED)
    assert text == f"acknowledgement from 192.0.2.10 under KEK {SPI.hex()}, which requests none"


def test_a_retired_kek_is_accepted_for_the_grace_period_only() -> None:
    server = verifier(grace=10.0)
    server.retire(SPI, NOW)
    assert isinstance(server.receive(ack(1), FROM, NOW + 9.9), AckReceived)
    rejected(server, ack(2), AckRejection.UNKNOWN_KEK, now=NOW + 10.0)
    server.retire(bytes(16), NOW)  # an SPI it never held: nothing to keep


def test_the_duplicate_cache_is_bounded() -> None:
    server = verifier(remembered=2)
    first, second, third = ack(1), ack(2), ack(3)
    for datagram in (first, second, third):
        assert isinstance(server.receive(datagram, FROM, NOW), AckReceived)
    rejected(server, third, AckRejection.DUPLICATE)
    assert isinstance(server.receive(first, FROM, NOW), AckReceived)  # forgotten: the key server sees an old SEQ


def _reframed(**fields: object) -> bytes:
    datagram = ack()
    return replace(Header.decode(datagram), **fields).encode() + datagram[HEADER.size :]


def test_malformed_acks() -> None:
    server = verifier()
    text = rejected(server, _reframed(flags=Flags.ENCRYPTION), AckRejection.MALFORMED)
    assert text.endswith("has flags 0x01 and Message ID 0x0; both must be 0 (RFC 8263 §3.1)")
    rejected(server, _reframed(message_id=1), AckRejection.MALFORMED)
    assert rejected(server, _reframed(exchange=ExchangeType.GROUPKEY_PUSH), AckRejection.MALFORMED) == (
        "GROUPKEY_PUSH from 192.0.2.10 is not a GROUPKEY-PUSH-ACK"
    )
    rejected(server, ack()[:20], AckRejection.MALFORMED)
    payloads = decode_message(ack()).payloads
    assert "carries HASH, ID, SEQ; it must be HASH, SEQ, ID" in rejected(
        server, message(payloads[0], payloads[2], payloads[1]), AckRejection.MALFORMED
    )
    rejected(server, message(*payloads[:2]), AckRejection.MALFORMED)
    with_port = Identification.of(MEMBER, 17, 848)
    assert "(protocol 17, port 848)" in rejected(server, message(*payloads[:2], with_port), AckRejection.MALFORMED)
    by_name = Identification(2, b"gm.example")  # ID_FQDN
    assert "identifies the member by FQDN" in rejected(server, message(*payloads[:2], by_name), AckRejection.MALFORMED)
    assert "Length is 84 but the datagram has 83 octets" in rejected(server, ack()[:-1], AckRejection.MALFORMED)
    assert "runs past the end" in rejected(server, _reframed(length=83)[:-1], AckRejection.MALFORMED)


def test_lkh_acks_are_not_implemented() -> None:
    with pytest.raises(ValueError, match="needs LKH"):
        build_ack(SPI, KEK, KekAckType.LKH_SHA256, 1, MEMBER)
    with pytest.raises(ValueError, match="needs LKH"):
        AckVerifier().install(replace(POLICY, ack=AckRequest(KekAckType.LKH_SHA512)), KEK)
    with pytest.raises(ValueError, match="16 octets"):
        build_ack(SPI[:8], KEK, KekAckType.KEK_SHA256, 1, MEMBER)
