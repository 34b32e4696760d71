"""Diffie-Hellman groups: agreement, fixed-length encodings, peer value validation."""

from __future__ import annotations

import re

import pytest

from groupvpn.crypto import dh
from groupvpn.crypto.errors import InvalidKey, InvalidPublicValue, UnsupportedAlgorithm
from groupvpn.wire.numbers import DhGroup

# Prime sizes in bits (RFC 2409 §6, RFC 3526) and field sizes (RFC 5903).
PUBLIC_SIZES = {
    DhGroup.MODP_768: 96,
    DhGroup.MODP_1024: 128,
    DhGroup.MODP_1536: 192,
    DhGroup.MODP_2048: 256,
    DhGroup.MODP_3072: 384,
    DhGroup.MODP_4096: 512,
    DhGroup.ECP_256: 64,
    DhGroup.ECP_384: 96,
    DhGroup.ECP_521: 132,
}
MODP = [g for g in PUBLIC_SIZES if g <= DhGroup.MODP_4096]
ECP = [g for g in PUBLIC_SIZES if g >= DhGroup.ECP_256]


def test_every_required_group_is_supported():
    assert dh.SUPPORTED_GROUPS == frozenset(PUBLIC_SIZES)


@pytest.mark.parametrize("number", list(PUBLIC_SIZES), ids=lambda g: g.name)
def test_both_sides_agree(number):
    group = dh.group(number)
    initiator, responder = group.generate(), group.generate()
    assert len(initiator.public_value) == PUBLIC_SIZES[number]
    secret = initiator.shared_secret(responder.public_value)
    assert secret == responder.shared_secret(initiator.public_value)
    expected = PUBLIC_SIZES[number] // (2 if number in ECP else 1)
    assert len(secret) == expected


@pytest.mark.parametrize("number", MODP, ids=lambda g: g.name)
def test_modp_primes_are_the_rfc_safe_primes(number):
    # RFC 2409 §6.2 / RFC 3526: p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) pi) + k);
    # checking the fixed top and bottom 64 bits and the Fermat test for p and (p-1)/2
    # catches any transcription error in the hex.
    p = dh.group(number).prime
    n = PUBLIC_SIZES[number] * 8
    assert p.bit_length() == n
    assert p >> (n - 64) == 2**64 - 1 and p & (2**64 - 1) == 2**64 - 1
    assert pow(2, p - 1, p) == 1
    q = (p - 1) // 2
    assert pow(3, q - 1, q) == 1


def test_modp_known_answer_group_14():
    # Digest §11.F: xi = 0x11 x 32, xr = 0x22 x 32.
    group = dh.group(DhGroup.MODP_2048)
    xi = group.keypair(int.from_bytes(b"\x11" * 32, "big"))
    xr = group.keypair(int.from_bytes(b"\x22" * 32, "big"))
    assert xi.public_value[:16].hex() == "ad8fc4a1fba7c548db731b8ecbca41a8"
    assert xi.public_value[-16:].hex() == "eaeeea3b75e843e516e6625bc7e8400e"
    g_xy = xi.shared_secret(xr.public_value)
    assert g_xy[:16].hex() == "699f08f9542faa9ff3982b71614839cb"
    assert g_xy[-16:].hex() == "8d5d16b0fb77d1346cd1afb833c7d6ee"


# RFC 5903 §8.1-8.3 (the RFC text is not in specs/; values as quoted by several public test
# suites, and they check each other: i and r give g^i, and i*g^r = r*g^i = the x of g^ir).
RFC5903 = {
    DhGroup.ECP_256: (
        "c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433",
        "c6ef9c5d78ae012a011164acb397ce2088685d8f06bf9be0b283ab46476bee53",
        "dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180"
        "5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3",
        "d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de",
    ),
    DhGroup.ECP_384: (
        "099f3c7034d4a2c699884d73a375a67f7624ef7c6b3c0f160647b67414dce655"
        "e35b538041e649ee3faef896783ab194",
        "41cb0779b4bdb85d47846725fbec3c9430fab46cc8dc5060855cc9bda0aa2942"
        "e0308312916b8ed2960e4bd55a7448fc",
        None,
        "11187331c279962d93d604243fd592cb9d0a926f422e47187521287e7156c5c4"
        "d603135569b9e9d09cf5d4a270f59746",
    ),
    DhGroup.ECP_521: (
        "0037ade9319a89f4dabdb3ef411aaccca5123c61acab57b5393dce47608172a0"
        "95aa85a30fe1c2952c6771d937ba9777f5957b2639bab072462f68c27a57382d4a52",
        "0145ba99a847af43793fdd0e872e7cdfa16be30fdc780f97bccc3f078380201e"
        "9c677d600b343757a3bdbf2a3163e4c2f869cca7458aa4a4effc311f5cb151685eb9",
        # x starts with a zero octet: coordinates keep their full 66-octet length.
        "0015417e84dbf28c0ad3c278713349dc7df153c897a1891bd98bab4357c9ecbee1e3"
        "bf42e00b8e380aeae57c2d107564941885942af5a7f4601723c4195d176ced3e"
        "017cae20b6641d2eeb695786d8c946146239d099e18e1d5a514c739d7cb4a10ad8a7"
        "88015ac405d7799dc75e7b7d5b6cf2261a6a7f1507438bf01beb6ca3926f9582",
        "01144c7d79ae6956bc8edb8e7c787c4521cb086fa64407f97894e5e6b2d79b04"
        "d1427e73ca4baa240a34786859810c06b3c715a3a8cc3151f2bee417996d19f3ddea",
    ),
}


@pytest.mark.parametrize("number", ECP, ids=lambda g: g.name)
def test_ecp_known_answers(number):
    i, r, g_i, g_ir = RFC5903[number]
    group = dh.group(number)
    initiator, responder = group.keypair(int(i, 16)), group.keypair(int(r, 16))
    if g_i is not None:
        assert initiator.public_value.hex() == g_i
    assert initiator.shared_secret(responder.public_value).hex() == g_ir
    assert responder.shared_secret(initiator.public_value).hex() == g_ir


def test_modp_public_value_is_left_padded():
    group = dh.group(DhGroup.MODP_768)
    pair = group.keypair(2)  # 2^2 = 4: one significant octet
    assert pair.public_value == bytes(95) + b"\x04"


def test_modp_shared_secret_keeps_leading_zero_octet():
    group = dh.group(DhGroup.MODP_768)
    responder = group.keypair(0xC0FFEE)
    for private in range(2, 4098):  # P(no hit) = (255/256)^4096 ~ 1e-7 for random values
        initiator = group.keypair(private)
        secret = initiator.shared_secret(responder.public_value)
        if secret[0] == 0:
            break
    else:
        pytest.fail("no shared secret with a leading zero octet in the searched range")
    assert len(secret) == 96
    assert secret == responder.shared_secret(initiator.public_value)
    y = int.from_bytes(responder.public_value, "big")
    assert int.from_bytes(secret, "big") == pow(y, private, group.prime)


@pytest.mark.parametrize(
    "value, problem",
    [
        (0, "0, 1 or p-1"),
        (1, "0, 1 or p-1"),
        ("p-1", "0, 1 or p-1"),
        ("p", "not below the prime"),
        ("2^768-1", "not below the prime"),
    ],
)
def test_modp_rejects_degenerate_values(value, problem):
    group = dh.group(DhGroup.MODP_768)
    number = {"p-1": group.prime - 1, "p": group.prime, "2^768-1": 2**768 - 1}.get(value, value)
    with pytest.raises(InvalidPublicValue, match=problem):
        group.generate().shared_secret(number.to_bytes(96, "big"))


def test_modp_rejects_wrong_length():
    group = dh.group(DhGroup.MODP_1024)
    peer = group.generate().public_value
    with pytest.raises(InvalidPublicValue, match="127 octets, expected 128"):
        group.generate().shared_secret(peer[1:])


@pytest.mark.parametrize("number", ECP, ids=lambda g: g.name)
def test_ecp_rejects_point_off_curve(number):
    group = dh.group(number)
    peer = bytearray(group.generate().public_value)
    peer[-1] ^= 1  # flip y's lowest bit: no longer on the curve
    with pytest.raises(InvalidPublicValue, match="not a point on"):
        group.generate().shared_secret(bytes(peer))


@pytest.mark.parametrize("number", ECP, ids=lambda g: g.name)
def test_ecp_rejects_wrong_length_and_zero(number):
    group = dh.group(number)
    pair = group.generate()
    with pytest.raises(InvalidPublicValue, match=re.escape("(x | y)")):
        pair.shared_secret(pair.public_value + b"\x00")
    with pytest.raises(InvalidPublicValue, match="not a point"):
        pair.shared_secret(bytes(group.public_size))


def test_ecp_keypair_from_private_scalar_is_deterministic():
    group = dh.group(DhGroup.ECP_256)
    assert group.keypair(7).public_value == group.keypair(7).public_value
    with pytest.raises(InvalidKey):
        group.keypair(0)


def test_private_values_stay_out_of_repr():
    pair = dh.group(DhGroup.MODP_768).keypair(0x1234567)
    assert "private" not in repr(pair) and str(0x1234567) not in repr(pair)
    assert "private" not in repr(dh.group(DhGroup.ECP_256).generate())


@pytest.mark.parametrize("number", [3, 4, 17, 99])
def test_unsupported_groups(number):
    with pytest.raises(UnsupportedAlgorithm, match=f"group {number}"):
        dh.group(number)


def test_modp_private_exponent_bounds():
    group = dh.group(DhGroup.MODP_768)
    with pytest.raises(InvalidKey):
        group.keypair(1)
    assert group.generate().private.bit_length() == 160
