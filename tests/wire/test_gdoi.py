"""Hand-computed encodings and precise errors for the GDOI payloads."""

from ipaddress import IPv4Address, IPv4Network

import pytest

from groupvpn.wire import numbers as n
from groupvpn.wire.attributes import Attribute
from groupvpn.wire.errors import WireError
from groupvpn.wire.gdoi import Gap, GroupSa, IpsecTek, KeyDownload, KeyPacket, SaKek, SaTek, SequenceNumber
from groupvpn.wire.ident import TrafficId
from groupvpn.wire.isakmp import Delete, Hash, Identification, Nonce, Signature
from groupvpn.wire.message import Message, decode_message, decode_payloads, encode_each, encode_payloads

KEK_SPI = bytes.fromhex("a1a2a3a4a5a6a7a8b1b2b3b4b5b6b7b8")
PULL = n.ExchangeType.GROUPKEY_PULL
PUSH = n.ExchangeType.GROUPKEY_PUSH

SAK = SaKek(
    17,
    TrafficId.of(IPv4Address("198.18.0.1"), 848),
    TrafficId.of(IPv4Address("239.1.1.1"), 848),
    KEK_SPI,
    (
        Attribute.tv(n.KekAttribute.KEK_ALGORITHM, n.KekAlgorithm.AES),
        Attribute.tv(n.KekAttribute.KEK_KEY_LENGTH, 128),
        Attribute.lifetime(n.KekAttribute.KEK_KEY_LIFETIME, 86400),
        Attribute.tv(n.KekAttribute.SIG_HASH_ALGORITHM, n.SigHashAlgorithm.SHA256),
        Attribute.tv(n.KekAttribute.SIG_ALGORITHM, n.SigAlgorithm.RSA),
        Attribute.tv(n.KekAttribute.SIG_KEY_LENGTH, 2048),
        Attribute.tv(n.KekAttribute.KEK_ACK_REQUESTED, n.KekAckType.KEK_SHA256),
        Attribute.tv(n.KEK_ACK_REQUESTED_LEGACY, 1),
    ),
)
SAK_BODY = bytes.fromhex(
    "11"  # Protocol UDP
    "01035004c6120001"  # SRC: ID_IPV4_ADDR, port 848, len 4, 198.18.0.1
    "01035004ef010101"  # DST: ID_IPV4_ADDR, port 848, len 4, 239.1.1.1
    "a1a2a3a4a5a6a7a8b1b2b3b4b5b6b7b8"  # SPI
    "00000000"  # RESERVED2
    "80020003800300800004000400015180800500038006000180070800"
    "80090001"
    "80810001"
)
TEK = SaTek(
    n.GdoiProtocol.IPSEC_ESP,
    IpsecTek(
        0,
        TrafficId.of(IPv4Network("10.1.0.0/16")),
        TrafficId.of(IPv4Network("10.2.0.0/16")),
        n.EspTransform.AES_CBC,
        bytes.fromhex("00001001"),
        (
            Attribute.tv(n.IpsecAttribute.SA_LIFE_TYPE, n.LifeType.SECONDS),
            Attribute.lifetime(n.IpsecAttribute.SA_LIFE_DURATION, 3600),
            Attribute.tv(n.IpsecAttribute.ENCAPSULATION_MODE, n.EncapsulationMode.TUNNEL),
            Attribute.tv(n.IpsecAttribute.AUTHENTICATION_ALGORITHM, n.AuthAlgorithm.HMAC_SHA2_256),
            Attribute.tv(n.IpsecAttribute.KEY_LENGTH, 128),
            Attribute.tv(n.IpsecAttribute.ADDRESS_PRESERVATION, n.AddressPreservation.SOURCE_AND_DESTINATION),
        ),
    ),
)
TEK_BODY = bytes.fromhex(
    "01"  # GDOI_PROTO_IPSEC_ESP
    "00"  # Protocol: any
    "040000080a010000ffff0000"  # SRC subnet, port 0, len 8
    "040000080a020000ffff0000"  # DST subnet
    "0c"  # ESP_AES
    "00001001"  # SPI
    "800100010002000400000e10800400018005000580060080800e0004"
)
GAP = Gap(
    (
        Attribute.tv(n.GapAttribute.ACTIVATION_TIME_DELAY, 5),
        Attribute.tv(n.GapAttribute.DEACTIVATION_TIME_DELAY, 30),
    )
)
SA = GroupSa(SAK, GAP, (TEK,))
KD = KeyDownload(
    (
        KeyPacket(
            n.KeyPacketType.TEK, TEK.policy.spi, (Attribute.tlv(n.TekKeyAttribute.TEK_ALGORITHM_KEY, bytes(16)),)
        ),
        KeyPacket(n.KeyPacketType.KEK, KEK_SPI, (Attribute.tlv(n.KekKeyAttribute.KEK_ALGORITHM_KEY, bytes(32)),)),
        KeyPacket(
            n.KeyPacketType.SID,
            b"",
            (
                Attribute.tv(n.SidKeyAttribute.NUMBER_OF_SID_BITS, 8),
                Attribute.tlv(n.SidKeyAttribute.SID_VALUE, b"\x00\x00\x00\x01"),
            ),
        ),
    )
)


def test_sa_kek_body():
    assert SAK.encode_body() == SAK_BODY
    assert SaKek.decode_body(SAK_BODY, 0) == SAK


def test_sa_tek_body():
    assert TEK.encode_body() == TEK_BODY
    assert SaTek.decode_body(TEK_BODY, 0) == TEK


def test_group_sa_layout_chains_attribute_payloads_inside_its_length():
    body = SA.encode_body()
    gap = GAP.encode_body()
    expected = (
        bytes.fromhex("00000002" "00000000" "000f" "0000")
        + bytes([n.PayloadType.GAP, 0])
        + (4 + len(SAK_BODY)).to_bytes(2, "big")
        + SAK_BODY
        + bytes([n.PayloadType.SAT, 0])
        + (4 + len(gap)).to_bytes(2, "big")
        + gap
        + bytes([0, 0])
        + (4 + len(TEK_BODY)).to_bytes(2, "big")
        + TEK_BODY
    )
    assert gap == bytes.fromhex("800100058002001e")
    assert body == expected
    assert GroupSa.decode_body(body, 0) == SA


def test_seq_payload_matches_digest_vector():
    # Digest §11.H: SEQ 1 followed by ID.
    chain = encode_each([Hash(bytes(32)), SequenceNumber(1), Identification.of(IPv4Address("192.0.2.10"))])
    assert chain[1] == bytes.fromhex("0500000800000001")


def test_key_download_layout():
    body = KD.encode_body()
    assert body[:4] == bytes.fromhex("00030000")
    assert body[4:13] == bytes.fromhex("0100001d" "04" "00001001")  # TEK packet: 5 + 4 + 20
    assert KD.packets[2].encode() == bytes.fromhex("04000011" "00" "80010008" "0002000400000001")
    assert KeyDownload.decode_body(body, 0) == KD


def test_pull_and_push_messages_round_trip():
    icky, rcky = KEK_SPI[:8], KEK_SPI[8:]
    msg2 = [Hash(b"\x01" * 32), Nonce(b"\x02" * 16), SA]
    payloads, padding = decode_payloads(n.PayloadType.HASH, encode_payloads(msg2) + bytes(7), PULL)
    assert payloads == tuple(msg2) and padding == bytes(7)
    push = [
        SequenceNumber(2),
        Delete(n.DOI.GDOI, n.GdoiProtocol.IPSEC_ESP, 4, (b"\x00\x00\x10\x00",)),
        GroupSa(teks=(TEK,)),
        KD,
        Signature(b"\x03" * 256),
    ]
    plaintext = encode_payloads(push)
    assert decode_payloads(n.PayloadType.SEQ, plaintext, PUSH) == (tuple(push), b"")
    signed = b"".join(encode_each(push)[:-1])
    assert signed[-len(KD.encode()) :][0] == n.PayloadType.SIG  # KD announces SIG in the signed octets
    ack = Message.build(
        icky,
        rcky,
        n.ExchangeType.GROUPKEY_PUSH_ACK,
        [Hash(b"\x04" * 32), SequenceNumber(2), Identification.of(IPv4Address("192.0.2.10"))],
    )
    assert decode_message(ack.encode()) == ack


def test_gap_alone_in_pull_message_3():
    msg3 = [Hash(b"\x01" * 32), Gap((Attribute.tv(n.GapAttribute.SENDER_ID_REQUEST, 2),))]
    assert decode_payloads(n.PayloadType.HASH, encode_payloads(msg3), PULL)[0] == tuple(msg3)


def test_private_values_are_preserved():
    private_tek = SaTek(200, b"\x01\x02\x03")
    assert SaTek.decode_body(private_tek.encode_body(), 0) == private_tek
    private_packet = KeyPacket(200, b"\x09", (Attribute.tlv(7, b"secret"),))
    kd = KeyDownload((private_packet,))
    assert KeyDownload.decode_body(kd.encode_body(), 0) == kd
    assert kd.to_dict()["packets"][0]["attributes"] == [{"class": "UNKNOWN(7)", "value": "<6 octets>"}]


def test_key_material_is_not_displayed():
    packets = KD.to_dict()["packets"]
    assert packets[0]["attributes"] == [{"class": "TEK_ALGORITHM_KEY", "value": "<16 octets>"}]
    assert packets[2]["attributes"][0] == {"class": "NUMBER_OF_SID_BITS", "value": 8}
    described = SA.to_dict()["attribute_payloads"]
    assert described[0]["attributes"][-2] == {"class": "KEK_ACK_REQUESTED", "value": "KEK_SHA256"}
    assert described[2]["policy"]["transform_id"] == "AES_CBC"


def _error(call):
    with pytest.raises(WireError) as err:
        call()
    return err.value.payload, err.value.offset, err.value.problem


def _sa(*chain: bytes, first: int) -> bytes:
    return bytes.fromhex("0000000200000000") + first.to_bytes(2, "big") + bytes(2) + b"".join(chain)


def _frame(next_payload: int, body: bytes) -> bytes:
    return bytes([next_payload, 0]) + (4 + len(body)).to_bytes(2, "big") + body


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: SequenceNumber.decode_body(bytes(5), 40), ("SEQ", 38, "payload length is 9, must be 8")),
        (
            lambda: GroupSa.decode_body(_sa(_frame(0, TEK_BODY), _frame(0, SAK_BODY), first=n.PayloadType.SAT), 100),
            ("SA", 100 + 12 + 4 + len(TEK_BODY), f"{len(SAK_BODY) + 4} octets after the last SA attribute payload"),
        ),
        (
            lambda: GroupSa.decode_body(
                _sa(_frame(n.PayloadType.SAK, TEK_BODY), _frame(0, SAK_BODY), first=n.PayloadType.SAT), 100
            ),
            ("SA", 112, "SA attribute payload 15 may not follow SAT"),
        ),
        (
            lambda: GroupSa.decode_body(_sa(_frame(0, GAP.encode_body()), first=n.PayloadType.GAP), 0),
            ("SA", 0, "GDOI SA carries neither SA KEK nor SA TEK"),
        ),
        (lambda: GroupSa.decode_body(_sa(first=0), 0), ("SA", 8, "SA attribute payload 0 may not follow the SA header")),
        (
            lambda: GroupSa.decode_body(bytes.fromhex("0000000200000001000f0000"), 0),
            ("SA", 4, "Situation is 0x1, must be 0"),
        ),
        (lambda: Gap.decode_body(bytes.fromhex("80040001"), 60), ("GAP", 60, "unknown GAP attribute class 4")),
        (
            lambda: Gap.decode_body(bytes.fromhex("000100020005"), 0),
            ("GAP", 0, "GAP attribute ACTIVATION_TIME_DELAY must be basic (TV)"),
        ),
        (
            lambda: SaKek.decode_body(SAK_BODY + bytes.fromhex("800a0001"), 0),
            ("SA KEK", len(SAK_BODY), "unknown KEK attribute class 10"),
        ),
        (
            lambda: SaKek.decode_body(SAK_BODY[:33] + b"\x01" + SAK_BODY[34:], 0),
            ("SA KEK", 33, "RESERVED2 is 0x1000000, must be 0"),
        ),
        (
            lambda: SaKek.decode_body(SAK_BODY[:4] + b"\x09" + SAK_BODY[5:], 0),
            ("SA KEK", 1, "IPV4_ADDR needs 4 data octets, got 9"),
        ),
        (
            lambda: SaKek.decode_body(SAK_BODY[:4] + b"\xff" + SAK_BODY[5:], 0),
            ("SA KEK", 4, "identity data length 255 runs past the payload ("),
        ),
        (lambda: SaTek.decode_body(b"\x00", 0), ("SA TEK", 0, "Protocol-ID 0 is reserved")),
        (
            lambda: KeyDownload.decode_body(bytes.fromhex("00010000" "0500000500"), 0),
            ("KD", 4, "unknown KD type 5"),
        ),
        (
            lambda: KeyDownload.decode_body(bytes.fromhex("00010000" "0400000904" "00000000"), 0),
            ("KD", 8, "SID SPI size is 4, must be 0"),
        ),
        (
            lambda: KeyDownload.decode_body(bytes.fromhex("00010000" "0400000b" "00" "000100020008"), 0),
            ("KD", 9, "SID attribute NUMBER_OF_SID_BITS must be basic (TV)"),
        ),
        (
            lambda: KeyDownload.decode_body(bytes.fromhex("00020000" "0400000500"), 0),
            ("KD", 0, "Number of Key Packets is 2 but 1 are present"),
        ),
        (
            lambda: KeyDownload.decode_body(bytes.fromhex("00010000" "0400000600"), 0),
            ("KD", 6, "KD length 6 does not fit SPI size 0 and 5 octets left"),
        ),
    ],
)
def test_precise_errors(call, expected):
    assert _error(call)[:2] == expected[:2]
    assert _error(call)[2].startswith(expected[2])


def test_sa_kek_outside_gdoi_exchange_is_proposal_form():
    # In Main Mode an SA with DOI 2 is the proposal form: the GDOI SA header does not parse as one.
    data = Message.build(bytes(8), bytes(8), PULL, [SA]).encode()
    assert decode_message(data).payloads == (SA,)
    mm = data[:18] + bytes([n.MAIN_MODE]) + data[19:]
    with pytest.raises(WireError):
        decode_message(mm)


def test_error_offsets_are_absolute_in_the_datagram():
    bad_gap = Gap((Attribute.tv(n.GapAttribute.ACTIVATION_TIME_DELAY, 5), Attribute.tv(4, 1)))
    payloads = [Hash(bytes(32)), Nonce(bytes(16)), GroupSa(SAK, bad_gap, (TEK,))]
    data = Message.build(KEK_SPI[:8], KEK_SPI[8:], PULL, payloads).encode()
    gap_attributes = 28 + 36 + 20 + 4 + 12 + 4 + len(SAK_BODY) + 4
    with pytest.raises(WireError) as err:
        decode_message(data)
    assert (err.value.payload, err.value.offset, err.value.problem) == (
        "GAP",
        gap_attributes + 4,
        "unknown GAP attribute class 4",
    )
    assert data[gap_attributes + 4 : gap_attributes + 8] == bytes.fromhex("80040001")
