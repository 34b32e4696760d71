"""Hand-computed encodings and precise errors for the header and IKEv1 payloads."""

from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

from groupvpn.wire import numbers as n
from groupvpn.wire.attributes import Attribute
from groupvpn.wire.errors import WireError
from groupvpn.wire.ident import AddressRange, Oid
from groupvpn.wire.isakmp import (
    Certificate,
    CertificateRequest,
    Delete,
    Hash,
    Identification,
    KeyExchange,
    Nonce,
    Notify,
    Proposal,
    RawPayload,
    SecurityAssociation,
    Transform,
    VendorId,
)
from groupvpn.wire.message import Header, Message, decode_message, decode_payloads, encode_each, encode_payloads

ICKY = bytes.fromhex("0102030405060708")
RCKY = bytes.fromhex("1112131415161718")

# Digest §11.F: SAi_b of the Main Mode worked example.
SAI_B = bytes.fromhex(
    "00000002000000000000003001010001000000280101000080010007800e0080"
    "80020004800300018004000e800b0001000c000400015180"
)
MAIN_MODE_TRANSFORM = Transform(
    1,
    n.IsakmpTransformId.KEY_IKE,
    (
        Attribute.tv(n.IkeAttribute.ENCRYPTION_ALGORITHM, n.EncryptionAlgorithm.AES_CBC),
        Attribute.tv(n.IkeAttribute.KEY_LENGTH, 128),
        Attribute.tv(n.IkeAttribute.HASH_ALGORITHM, n.HashAlgorithm.SHA2_256),
        Attribute.tv(n.IkeAttribute.AUTHENTICATION_METHOD, n.AuthMethod.PRE_SHARED_KEY),
        Attribute.tv(n.IkeAttribute.GROUP_DESCRIPTION, n.DhGroup.MODP_2048),
        Attribute.tv(n.IkeAttribute.LIFE_TYPE, n.LifeType.SECONDS),
        Attribute.lifetime(n.IkeAttribute.LIFE_DURATION, 86400),
    ),
)
MAIN_MODE_SA = SecurityAssociation((Proposal(1, n.ProtocolId.ISAKMP, (MAIN_MODE_TRANSFORM,)),))


def test_sai_b_matches_digest_vector():
    assert MAIN_MODE_SA.encode_body() == SAI_B
    assert SecurityAssociation.decode_body(SAI_B, 32) == MAIN_MODE_SA
    assert MAIN_MODE_SA.encode() == bytes.fromhex("0000") + (4 + len(SAI_B)).to_bytes(2, "big") + SAI_B


def test_id_bodies_match_digest_vector():
    idii = Identification.of(IPv4Address("192.0.2.1"), protocol=17, port=500)
    assert idii.encode_body() == bytes.fromhex("011101f4c0000201")
    assert Identification.decode_body(bytes.fromhex("011101f4c0000202"), 0).value == IPv4Address("192.0.2.2")


def test_pull_message_1_payloads_match_digest_vector():
    # Digest §11.G: Ni (next = ID) and the group ID payload as hashed in HASH(1).
    chain = encode_each([Hash(bytes(32)), Nonce(b"\x5a" * 16), Identification.group(1234)])
    assert chain[1] == bytes.fromhex("050000145a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a")
    assert chain[2] == bytes.fromhex("0000000c0b000000000004d2")
    assert chain[0][:4] == bytes.fromhex("0a000024")


def test_ack_id_payload_matches_digest_vector():
    # Digest §11.H: ID_IPV4_ADDR 192.0.2.10, protocol 0, port 0, last in the chain.
    assert Identification.of(IPv4Address("192.0.2.10")).encode() == bytes.fromhex("0000000c01000000c000020a")


def test_main_mode_message_1_round_trip_and_header_bytes():
    message = Message.build(ICKY, bytes(8), n.MAIN_MODE, [MAIN_MODE_SA, VendorId(n.DPD_VENDOR_ID)])
    data = message.encode()
    assert data[:28] == ICKY + bytes(8) + bytes.fromhex("01100200") + bytes(4) + len(data).to_bytes(4, "big")
    assert data[28:30] == bytes([n.PayloadType.VENDOR_ID, 0])
    assert decode_message(data) == message


def test_group_id_helpers():
    gid = Identification.group(0x01020304)
    assert gid.group_number == 0x01020304
    assert Identification(n.IdType.KEY_ID, b"abc").group_number is None


@pytest.mark.parametrize(
    ("value", "id_type", "data"),
    [
        (IPv4Network("10.1.0.0/16"), n.IdType.IPV4_ADDR_SUBNET, "0a010000ffff0000"),
        (IPv6Network("2001:db8::/32"), n.IdType.IPV6_ADDR_SUBNET, "20010db8" + "00" * 12 + "ffffffff" + "00" * 12),
        (
            AddressRange(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.9")),
            n.IdType.IPV4_ADDR_RANGE,
            "0a0000010a000009",
        ),
        (Oid(bytes.fromhex("06032b0601"), b"\x04\x01"), n.IdType.OID, "0506032b060100020401"),
    ],
)
def test_typed_id_values(value, id_type, data):
    ident = Identification.of(value)
    assert (ident.id_type, ident.data.hex()) == (id_type, data)
    assert Identification.decode_body(ident.encode_body(), 0).value == value


def test_notify_delete_cert_layouts():
    dpd = Notify(n.NotifyType.R_U_THERE, spi=ICKY + RCKY, data=(7).to_bytes(4, "big"))
    assert dpd.encode_body() == bytes.fromhex("0000000101108d28") + ICKY + RCKY + bytes.fromhex("00000007")
    delete = Delete(n.DOI.GDOI, n.GdoiProtocol.IPSEC_ESP, 4, (b"\x00\x00\x10\x01", b"\x00\x00\x10\x02"))
    assert delete.encode_body() == bytes.fromhex("00000002010400020000100100001002")
    assert Delete.decode_body(delete.encode_body(), 0) == delete
    cert = Certificate(n.CertEncoding.X509_SIGNATURE, b"\x30\x00")
    assert Certificate.decode_body(cert.encode_body(), 0) == cert
    assert CertificateRequest.decode_body(b"\x04", 0) == CertificateRequest(4, b"")


def test_private_and_nat_payloads_are_kept_raw():
    # VID (next 128) -> private 128 (next 20) -> NAT-D (last).
    body = bytes.fromhex("800000060102" "1400000601ff" "00000006abcd")
    payloads, padding = decode_payloads(n.PayloadType.VENDOR_ID, body, n.MAIN_MODE)
    assert payloads == (VendorId(b"\x01\x02"), RawPayload(128, b"\x01\xff"), RawPayload(20, b"\xab\xcd"))
    assert padding == b""
    assert encode_payloads(payloads) == body


def test_encrypted_message_keeps_ciphertext_and_parses_plaintext_with_padding():
    inner = [Identification.of(IPv4Address("192.0.2.1"), 17, 500), Hash(b"\x11" * 32)]
    plaintext = encode_payloads(inner)
    padded = plaintext + bytes(-len(plaintext) % 16)
    ciphertext = bytes(range(len(padded)))  # stands in for the cipher output
    sealed = Message.sealed(ICKY, RCKY, n.MAIN_MODE, n.PayloadType.ID, ciphertext)
    data = sealed.encode()
    assert data[19] == n.Flags.ENCRYPTION and int.from_bytes(data[24:28], "big") == len(data)
    received = decode_message(data)
    assert received.encrypted and received.ciphertext == ciphertext and received.payloads == ()
    payloads, padding = received.decode_plaintext(padded)
    assert list(payloads) == inner and padding == padded[len(plaintext) :]


def test_header_make_gives_on_wire_length_for_signing():
    header = Header.make(ICKY, RCKY, n.ExchangeType.GROUPKEY_PUSH, n.PayloadType.SEQ, 96, flags=n.Flags.ENCRYPTION)
    assert header.length == 124 and header.encode()[16:20] == bytes.fromhex("12102101")


def test_to_dict_uses_registry_names():
    described = Message.build(ICKY, bytes(8), n.MAIN_MODE, [MAIN_MODE_SA]).to_dict()
    transform = described["payloads"][0]["proposals"][0]["transforms"][0]
    assert described["header"]["exchange"] == "IDENTITY_PROTECTION"
    assert transform["attributes"][0] == {"class": "ENCRYPTION_ALGORITHM", "value": "AES_CBC"}
    assert transform["attributes"][-1] == {"class": "LIFE_DURATION", "value": 86400}


def _error(call):
    with pytest.raises(WireError) as err:
        call()
    return err.value.payload, err.value.offset, err.value.problem


def _clear(*payload_bytes: bytes, first: int, exchange: int = n.MAIN_MODE) -> bytes:
    body = b"".join(payload_bytes)
    return ICKY + bytes(8) + bytes([first, 0x10, exchange, 0]) + bytes(4) + (28 + len(body)).to_bytes(4, "big") + body


EMPTY = _clear(first=0)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes(27), ("ISAKMP header", 0, "datagram of 27 octets is shorter than the 28-octet header")),
        (EMPTY[:17] + b"\x20" + EMPTY[18:], ("ISAKMP header", 17, "major version 2, only 1 is supported")),
        (EMPTY[:19] + b"\x08" + EMPTY[20:], ("ISAKMP header", 19, "undefined flag bits in 0x08")),
        (_clear(first=0, exchange=7), ("ISAKMP header", 18, "unknown exchange type 7")),
        (EMPTY + b"\x00", ("ISAKMP header", 24, "Length is 28 but the datagram has 29 octets")),
        (_clear(bytes.fromhex("000000"), first=10), ("NONCE", 28, "3 octets left, too short for a payload header")),
        (_clear(bytes.fromhex("00000005aa00"), first=10), ("payload chain", 33, "1 octets after the last payload")),
        (
            _clear(bytes.fromhex("000000090000"), first=10),
            ("NONCE", 30, "payload length 9 runs past the end (6 octets left)"),
        ),
        (_clear(bytes.fromhex("00010004"), first=10), ("NONCE", 29, "RESERVED octet is 0x01, must be 0")),
        (_clear(bytes.fromhex("00000004"), first=14), ("payload chain", 28, "unknown payload type 14")),
        (_clear(bytes(4), first=15), ("payload chain", 28, "SAK payload outside its GDOI SA payload")),
        (_clear(bytes(4), first=2), ("payload chain", 28, "PROPOSAL payload outside its SA payload")),
        (_clear(bytes.fromhex("0000000801000000"), first=5), ("ID", 32, "IPV4_ADDR needs 4 data octets, got 0")),
        (
            _clear(bytes.fromhex("0000001004000000") + bytes.fromhex("0a000000ff00ff00"), first=5),
            ("ID", 32, "IPV4_ADDR_SUBNET mask ff00ff00 is not contiguous"),
        ),
    ],
)
def test_precise_errors(data, expected):
    assert _error(lambda: decode_message(data)) == expected


def test_transform_count_and_attribute_form_errors():
    wrong_count = bytearray(SAI_B)
    wrong_count[15] = 2  # "# of Transforms"
    assert _error(lambda: SecurityAssociation.decode_body(bytes(wrong_count), 32)) == (
        "Transform",
        48,
        "header announces 2 but 1 are present",
    )
    # The Hash Algorithm class (basic by definition) sent as a 2-octet TLV:
    # proposal and transform lengths grow by 2.
    tweaked = bytearray(SAI_B[:32] + bytes.fromhex("000200020004") + SAI_B[36:])
    tweaked[10:12] = (0x32).to_bytes(2, "big")
    tweaked[18:20] = (0x2A).to_bytes(2, "big")
    assert _error(lambda: SecurityAssociation.decode_body(bytes(tweaked), 32)) == (
        "Transform",
        64,
        "IKE attribute HASH_ALGORITHM must be basic (TV)",
    )


def test_sa_errors():
    assert _error(lambda: SecurityAssociation.decode_body(bytes.fromhex("0000000300000000"), 4)) == (
        "SA",
        4,
        "unsupported DOI 3",
    )
    assert _error(lambda: SecurityAssociation.decode_body(bytes.fromhex("0000000200000000"), 4)) == (
        "SA",
        12,
        "SA payload carries no proposal",
    )
    assert _error(lambda: SecurityAssociation.decode_body(bytes.fromhex("0000000100000002") + SAI_B[8:], 4)) == (
        "SA",
        8,
        "labelled situation 0x2 is not supported",
    )


def test_delete_and_notify_errors():
    assert _error(lambda: Delete.decode_body(bytes.fromhex("000000020104000200001001"), 100)) == (
        "DELETE",
        106,
        "2 SPIs of 4 octets need 8 octets, body has 4",
    )
    assert _error(lambda: Notify.decode_body(bytes.fromhex("0000000101100018"), 0)) == (
        "NOTIFY",
        0,
        "body of 8 octets is shorter than the 24 fixed octets",
    )


def test_ke_and_nonce_are_opaque():
    assert KeyExchange.decode_body(b"\x01" * 256, 0) == KeyExchange(b"\x01" * 256)
    assert KeyExchange(b"x") != Nonce(b"x")


def test_quick_mode_sa_under_ipsec_doi_decodes_as_proposals():
    """Exchange 32 is Quick Mode under DOI 1: its SA carries proposals, not GDOI attribute payloads."""
    from groupvpn.wire.attributes import Attribute
    from groupvpn.wire.isakmp import Proposal, SecurityAssociation, Transform
    from groupvpn.wire.message import Message, decode_message
    from groupvpn.wire.numbers import DOI, ExchangeType, ProtocolId, Situation

    sa = SecurityAssociation(
        (Proposal(1, ProtocolId.IPSEC_ESP, (Transform(1, 12, (Attribute.tv(6, 128),)),), spi=b"\x01\x02\x03\x04"),),
        doi=DOI.IPSEC,
        situation=Situation.SIT_IDENTITY_ONLY,
    )
    msg = Message.build(b"\x11" * 8, b"\x22" * 8, ExchangeType.GROUPKEY_PULL, [sa], message_id=7)
    decoded = decode_message(msg.encode())
    assert decoded.payloads == (sa,)
