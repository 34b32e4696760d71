"""IKEv1 Phase 1 derivations against the digest's §11 vectors (NIST CAVP and self-computed)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from groupvpn.crypto import dh, ikev1
from groupvpn.crypto.errors import InvalidKey
from groupvpn.wire.numbers import DhGroup, HashAlgorithm

SHA1, SHA256 = HashAlgorithm.SHA1, HashAlgorithm.SHA2_256

# Digest §11.A: NIST CAVP IKEv1 PSK, SHA-1, COUNT = 0.
CAVP = dict(
    psk=bytes.fromhex("75"),
    ni_b=bytes.fromhex("b9a2d0e922dc66dd"),
    nr_b=bytes.fromhex("2130166863b5ddef"),
    g_xy=bytes.fromhex("739003ba2c11c982946c65e26acf661fbf8ebb78011a9fead79efa12fe3e71cc"),
    cky_i=bytes.fromhex("83d374c30b3b5082"),
    cky_r=bytes.fromhex("5afc0da06c728029"),
)


def test_nist_cavp_psk_vector():
    keys = ikev1.psk_keys(SHA1, **CAVP)
    assert keys.skeyid.hex() == "62b04d112877e442fc3282fc37c076997718a0b9"
    assert keys.skeyid_d.hex() == "369e5aad1bdb5faf6a3d929d500cdc236710a9ab"
    assert keys.skeyid_a.hex() == "588e957d8d790d093b3a39f121473473af78e9bb"
    assert keys.skeyid_e.hex() == "cd74b0c048219db81384d3fda8f6cda51e398a2b"


def test_appendix_b_key_expansion():
    # Digest §11.E, from the CAVP SKEYID_e.
    keys = ikev1.psk_keys(SHA1, **CAVP)
    assert keys.cipher_key(16).hex() == "cd74b0c048219db81384d3fda8f6cda5"
    assert keys.cipher_key(20) == keys.skeyid_e
    k1 = "9ce3201d5c6cf897a6cba863e68c634d8d63805d"
    k2 = "1f20e30bf6884e2a4ee9fc8abe94a67a0c33898f"
    assert keys.cipher_key(24).hex() == (k1 + k2)[:48]  # 3DES with SHA-1 needs Ka too
    assert keys.cipher_key(32).hex() == (k1 + k2)[:64]
    assert keys.cipher_key(32).hex() == (
        "9ce3201d5c6cf897a6cba863e68c634d8d63805d1f20e30bf6884e2a4ee9fc8a"
    )


def test_appendix_b_expansion_beyond_two_blocks():
    key = ikev1.encryption_key(HashAlgorithm.MD5, b"e" * 16, 40)  # needs K1..K3
    k1 = hmac.digest(b"e" * 16, b"\x00", "md5")
    k2 = hmac.digest(b"e" * 16, k1, "md5")
    k3 = hmac.digest(b"e" * 16, k2, "md5")
    assert key == (k1 + k2 + k3)[:40]


# Digest §11.F: Main Mode PSK, group 14, SHA-256, AES-128.
SAI_B = bytes.fromhex(
    "00000002000000000000003001010001000000280101000080010007800e0080"
    "80020004800300018004000e800b0001000c000400015180"
)
CKY_I, CKY_R = bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718")


@pytest.fixture(scope="module")
def main_mode():
    group = dh.group(DhGroup.MODP_2048)
    initiator = group.keypair(int.from_bytes(b"\x11" * 32, "big"))
    responder = group.keypair(int.from_bytes(b"\x22" * 32, "big"))
    g_xy = responder.shared_secret(initiator.public_value)
    keys = ikev1.psk_keys(
        SHA256, b"gdoi-test-psk", b"\xa0" * 16, b"\xb0" * 16, g_xy, CKY_I, CKY_R
    )
    return initiator.public_value, responder.public_value, g_xy, keys


def test_main_mode_inputs(main_mode):
    g_xi, g_xr, g_xy, _ = main_mode
    assert hashlib.sha256(g_xi).hexdigest() == (
        "a25bbf7837f6962b48eebfa9b3eabb556ca982238c8e7fa94e7af29bbf929012"
    )
    assert hashlib.sha256(g_xr).hexdigest() == (
        "73b36be73cc74cebfb3011f6514cba6bd74f864934271230bab73876749cb833"
    )
    assert hashlib.sha256(g_xy).hexdigest() == (
        "f33967491b99ecccbf10d9e8bf48e2317680e6cdaba689e1337fef1127a17369"
    )


def test_main_mode_keys(main_mode):
    *_, keys = main_mode
    assert keys.skeyid.hex() == "5396f0f929b8a9fa35956d5eb6def2c13fbb63b48d648d39da80820ae7376a0f"
    assert keys.skeyid_d.hex() == "64b0738036959d1fdf51b038e4e44f747fc8f4520f01cb825188a6d4e5fe19b2"
    assert keys.skeyid_a.hex() == "830148c2c3b44ab886491d400984b70dfb3e6de8b859990d01cd1b8aff395091"
    assert keys.skeyid_e.hex() == "eff98783dfdf73d3feff74bd91cf43b74e3f4aad67aa5896387572418b306a5d"
    assert keys.cipher_key(16).hex() == "eff98783dfdf73d3feff74bd91cf43b7"


def test_main_mode_iv(main_mode):
    g_xi, g_xr, _, _ = main_mode
    iv = ikev1.phase1_iv(SHA256, g_xi, g_xr, 16)
    assert iv.hex() == "3a43118a65a4d22a67581cae856c17b6"
    assert ikev1.phase1_iv(SHA256, g_xi, g_xr, 8) == iv[:8]


def test_main_mode_hash_i_and_hash_r(main_mode):
    g_xi, g_xr, _, keys = main_mode
    common = dict(g_xi=g_xi, g_xr=g_xr, cky_i=CKY_I, cky_r=CKY_R, sai_b=SAI_B)
    hash_i = ikev1.hash_i(SHA256, keys.skeyid, idii_b=bytes.fromhex("011101f4c0000201"), **common)
    hash_r = ikev1.hash_r(SHA256, keys.skeyid, idir_b=bytes.fromhex("011101f4c0000202"), **common)
    assert hash_i.hex() == "a63e4005a2d09d7ab8dbeca8a8a7f9bf3837076f155f9866c0bc882a91146793"
    assert hash_r.hex() == "09f19911c4bd6c72860b90503df9a2c64c3742d412f87e13cb3b45a82a7e136a"


def test_phase2_iv():
    # Digest §11.G.
    last_block = bytes.fromhex("00112233445566778899aabbccddeeff")
    iv = ikev1.phase2_iv(SHA256, last_block, 0xC0FFEE01, 16)
    assert iv.hex() == "7709ee2bd5f5829830c1bd3c515dcf1e"


def test_informational_hash_covers_message_id_then_payload():
    skeyid_a = b"\x5a" * 20
    delete = bytes.fromhex("0000001c000000010110000101020304050607081112131415161718")
    expected = hmac.digest(skeyid_a, bytes.fromhex("deadbeef") + delete, "sha1")
    assert ikev1.informational_hash(SHA1, skeyid_a, 0xDEADBEEF, delete) == expected


def test_keys_stay_out_of_repr():
    keys = ikev1.psk_keys(SHA1, **CAVP)
    assert repr(keys) == "Phase1Keys(hash=<HashAlgorithm.SHA1: 2>)"


def test_cookies_must_be_eight_octets():
    with pytest.raises(InvalidKey, match="cookies"):
        ikev1.derive_keys(SHA1, b"s" * 20, b"g" * 32, b"short", CAVP["cky_r"])
