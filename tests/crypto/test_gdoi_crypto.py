"""GDOI hashes, KEK key material and RFC 8263 ack hashes (digest §11.G, §11.H)."""

from __future__ import annotations

import hmac

import pytest

from groupvpn.crypto import gdoi
from groupvpn.crypto.errors import InvalidKey, UnsupportedAlgorithm
from groupvpn.wire.numbers import HashAlgorithm, KekAckType, KekAlgorithm

SHA256 = HashAlgorithm.SHA2_256
# SKEYID_a of the digest's §11.F Main Mode.
SKEYID_A = bytes.fromhex("830148c2c3b44ab886491d400984b70dfb3e6de8b859990d01cd1b8aff395091")
MID = 0xC0FFEE01
NI_PAYLOAD = bytes.fromhex("050000145a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a")
NI_B = NI_PAYLOAD[4:]
NR_PAYLOAD = bytes.fromhex("010000146b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b")
NR_B = NR_PAYLOAD[4:]


def reference(*parts: bytes) -> bytes:
    return hmac.digest(SKEYID_A, MID.to_bytes(4, "big") + b"".join(parts), "sha256")


def test_pull_hash1_vector():
    # Digest §11.G.
    id_payload = bytes.fromhex("0000000c0b000000000004d2")
    out = gdoi.pull_hash1(SHA256, SKEYID_A, MID, ni=NI_PAYLOAD, id_=id_payload)
    assert out.hex() == "0b4bbe6b804f87aa0d303320104a51ff48e0967d4a6d66e2ef7f3d1eed110179"


def test_pull_hash2_to_4_cover_the_right_parts_in_order():
    sa, gap, seq, kd = b"<SA+SAK+SAT>", b"<GAP>", b"<SEQ>", b"<KD>"
    assert gdoi.pull_hash2(SHA256, SKEYID_A, MID, ni_b=NI_B, nr=NR_PAYLOAD, sa=sa) == reference(
        NI_B, NR_PAYLOAD, sa
    )
    assert gdoi.pull_hash3(SHA256, SKEYID_A, MID, ni_b=NI_B, nr_b=NR_B) == reference(NI_B, NR_B)
    assert gdoi.pull_hash3(SHA256, SKEYID_A, MID, ni_b=NI_B, nr_b=NR_B, gap=gap) == reference(
        NI_B, NR_B, gap
    )
    assert gdoi.pull_hash4(SHA256, SKEYID_A, MID, ni_b=NI_B, nr_b=NR_B, kd=kd) == reference(
        NI_B, NR_B, kd
    )
    assert gdoi.pull_hash4(
        SHA256, SKEYID_A, MID, ni_b=NI_B, nr_b=NR_B, kd=kd, seq=seq
    ) == reference(NI_B, NR_B, seq, kd)


def test_pull_hash3_has_no_quick_mode_zero_octet():
    quick_mode_style = hmac.digest(
        SKEYID_A, b"\x00" + MID.to_bytes(4, "big") + NI_B + NR_B, "sha256"
    )
    assert gdoi.pull_hash3(SHA256, SKEYID_A, MID, ni_b=NI_B, nr_b=NR_B) != quick_mode_style


# Digest §11.H.
BASE_KEY = bytes(range(16))
SPI = bytes.fromhex("a1a2a3a4a5a6a7a8b1b2b3b4b5b6b7b8")
SEQ_PAYLOAD = bytes.fromhex("0500000800000001")
ID_PAYLOAD = bytes.fromhex("0000000c01000000c000020a")


def test_ack_label():
    assert gdoi.ACK_LABEL.hex() == "47524f55504b45592d505553482041434b00"


@pytest.mark.parametrize(
    "length, key, digest",
    [
        (
            gdoi.AckKeyLength.PRF_BLOCK,
            "7eca409fdc5d45ebabd8bac377a58c416fe064134289ad52d49672f4fd9359e3",
            "fa1b3e1c3f0cd2caee696c3ce571371c79a1449a5dbcaf6f105c3b0370761591",
        ),
        (
            gdoi.AckKeyLength.PRF_OUTPUT,
            "ebf294249513dffa5c7ac1e81f83f291140c8714a6c254a225d1f031553c6d18",
            "72052bd50921ab54e2673a86e4a3d84e4b3b213a06e37a6e60dcb8da872590c4",
        ),
    ],
)
def test_ack_vectors(length, key, digest):
    ack_key = gdoi.ack_key(KekAckType.KEK_SHA256, BASE_KEY, SPI, length)
    assert ack_key.hex() == key
    assert gdoi.ack_hash(KekAckType.KEK_SHA256, ack_key, seq=SEQ_PAYLOAD, id_=ID_PAYLOAD).hex() == digest


def test_ack_default_is_the_literal_must():
    assert gdoi.ack_key(1, BASE_KEY, SPI) == gdoi.ack_key(1, BASE_KEY, SPI, gdoi.AckKeyLength.PRF_BLOCK)


@pytest.mark.parametrize("ack_type", [KekAckType.KEK_SHA512, KekAckType.LKH_SHA512])
def test_ack_sha512_types_use_l_1024(ack_type):
    key = gdoi.ack_key(ack_type, BASE_KEY, SPI)
    assert key == hmac.digest(BASE_KEY, gdoi.ACK_LABEL + SPI + b"\x04\x00", "sha512")
    assert len(gdoi.ack_hash(ack_type, key, seq=SEQ_PAYLOAD, id_=ID_PAYLOAD)) == 64
    short = gdoi.ack_key(ack_type, BASE_KEY, SPI, gdoi.AckKeyLength.PRF_OUTPUT)
    assert short == hmac.digest(BASE_KEY, gdoi.ACK_LABEL + SPI + b"\x02\x00", "sha512")


def test_ack_rejects_bad_inputs():
    with pytest.raises(UnsupportedAlgorithm, match="KEK_ACK_REQUESTED type 5"):
        gdoi.ack_key(5, BASE_KEY, SPI)
    with pytest.raises(InvalidKey, match="16 octets"):
        gdoi.ack_key(1, BASE_KEY, SPI[:8])


def test_kek_material_is_iv_then_key():
    material = bytes(range(32))
    kek = gdoi.Kek.from_material(KekAlgorithm.AES, material, 128)
    assert (kek.iv, kek.key) == (material[:16], material[16:])
    assert kek.material == material
    assert gdoi.Kek.from_material(KekAlgorithm.AES, material).key == material[16:]
    triple = gdoi.Kek.from_material(KekAlgorithm.TRIPLE_DES, bytes(32))
    assert (len(triple.iv), len(triple.key)) == (8, 24)


def test_kek_material_validation():
    with pytest.raises(InvalidKey, match="must be 48 octets"):
        gdoi.Kek.from_material(KekAlgorithm.AES, bytes(32), 256)
    with pytest.raises(InvalidKey, match="AES-CBC key must be 16 or 24 or 32 octets, got 20"):
        gdoi.Kek.from_material(KekAlgorithm.AES, bytes(36))
    with pytest.raises(UnsupportedAlgorithm):
        gdoi.Kek.from_material(7, bytes(32))


@pytest.mark.parametrize(
    "algorithm, key_bits",
    [(KekAlgorithm.AES, 128), (KekAlgorithm.AES, 256), (KekAlgorithm.TRIPLE_DES, None), (KekAlgorithm.DES, None)],
)
def test_kek_round_trip_with_static_iv(algorithm, key_bits):
    kek = gdoi.Kek.generate(algorithm, key_bits)
    receiver = gdoi.Kek.from_material(algorithm, kek.material, key_bits)
    push = b"SEQ|SA|KD|SIG payloads"
    ciphertext = kek.encrypt(push)
    assert receiver.decrypt(ciphertext)[: len(push)] == push
    assert kek.encrypt(push) == ciphertext  # same delivered IV for every PUSH under this KEK


def test_kek_keeps_material_out_of_repr():
    kek = gdoi.Kek(KekAlgorithm.AES, b"\x11" * 16, b"\x22" * 16)
    assert repr(kek) == "Kek(algorithm=<KekAlgorithm.AES: 3>)"
