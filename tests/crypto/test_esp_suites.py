"""ESP suites: RFC 3602 packets through the suite API, HMAC truncation vectors, every suite round trip."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from groupvpn.crypto import cbc
from groupvpn.crypto.errors import (
    CryptoError,
    IntegrityError,
    InvalidKey,
    IvSpaceExhausted,
    UnsupportedAlgorithm,
)
from groupvpn.crypto.suites import INTEGRITY, SUITES, CbcIvSource, CounterIvSource, EspKeys, esp_suite
from groupvpn.wire.numbers import AuthAlgorithm, EspTransform


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


# RFC 3602 §4 cases #5-#8: (key, SPI, seq, IV, payload before the trailer, next header, ciphertext).
RFC3602_ESP = {
    5: (
        "90d382b4 10eeba7a d938c46c ec1a82bf", 0x4321, 1, "e96e8c08 ab465763 fd098d45 dd3ff893",
        """08000ebd a70a0000 8e9c083d b95b0700 08090a0b 0c0d0e0f 10111213 14151617
        18191a1b 1c1d1e1f 20212223 24252627 28292a2b 2c2d2e2f 30313233 34353637""",
        1,
        """f663c25d 325c18c6 a9453e19 4e120849 a4870b66 cc6b9965 330013b4 898dc856
        a4699e52 3a55db08 0b59ec3a 8e4b7e52 775b07d1 db34ed9c 538ab50c 551b874a
        a269add0 47ad2d59 13ac19b7 cfbad4a6""",
    ),
    6: (
        "90d382b4 10eeba7a d938c46c ec1a82bf", 0x4321, 8, "69d08df7 d203329d b093fc49 24e5bd80",
        "0800b5e8 a80a0500 a69c083d 0b660e00 77777777 77777777 77777777",
        1,
        "f5199588 1ec4e0c4 488987ce 742e8109 689bb379 d2d750c0 d915dca3 46a89f75",
    ),
    7: (
        "01234567 89abcdef 01234567 89abcdef", 0x8765, 2, "f4e76524 4f6407ad f13dc138 0f673f37",
        """45000054 09040000 4001f988 c0a87b03 c0a87bc8
        08009f76 a90a0100 b49c083d 02a20400 08090a0b 0c0d0e0f 10111213 14151617
        18191a1b 1c1d1e1f 20212223 24252627 28292a2b 2c2d2e2f 30313233 34353637""",
        4,
        """773b5241 a4c44922 5e4f3ce5 ed611b0c 237ca96c f74a9301 3c1b0ea1 a0cf70f8
        e4ecaec7 8ac53aad 7a0f022b 859243c6 47752e94 a859352b 8a4d4d2d ecd136e5
        c177f132 ad3fbfb2 201ac990 4c74ee0a 109e0ca1 e4dfe9d5 a100b842 f1c22f0d""",
    ),
    8: (
        "01234567 89abcdef 01234567 89abcdef", 0x8765, 5, "85d47224 b5f3dd5d 2101d4ea 8dffab22",
        """45000044 090c0000 4001f990 c0a87b03 c0a87bc8
        0800d63c aa0a0200 c69c083d a3de0300 ffffffff ffffffff ffffffff ffffffff
        ffffffff ffffffff ffffffff ffffffff""",
        4,
        """15b92683 819596a8 047232cc 00f7048f e45318e1 1f8a0f62 ede3c3fc 61203bb5
        0f980a08 c9843fd3 a1b06d5c 07ff9639 b7eb7dfb 3512e5de 435e7207 ed971ef3
        d2726d9b 5ef6affc 6d17a0de cbb13892""",
    ),
}

AUTH_KEY_20 = bytes(range(1, 21))
AUTH_KEY_32 = bytes(range(1, 33))


def esp_plaintext(suite, payload: bytes, next_header: int) -> bytes:
    """payload | 1, 2, 3... padding | Pad Length | Next Header (RFC 4303 §2.4-2.6)."""
    pad = suite.pad_length(len(payload))
    return payload + bytes(range(1, pad + 1)) + bytes([pad, next_header])


def rfc3602_packet(case: int):
    key, spi, seq, iv, payload, next_header, ciphertext = RFC3602_ESP[case]
    header = spi.to_bytes(4, "big") + seq.to_bytes(4, "big")
    return h(key), header, h(iv), h(payload), next_header, h(ciphertext)


@pytest.mark.parametrize("case", sorted(RFC3602_ESP))
def test_rfc3602_esp_packets_through_the_suite(case):
    key, header, iv, payload, next_header, ciphertext = rfc3602_packet(case)
    suite = esp_suite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA1)
    plaintext = esp_plaintext(suite, payload, next_header)
    sealed = suite.prepare(EspKeys(key, AUTH_KEY_20)).seal(header, plaintext, iv)
    assert sealed[: -suite.icv_size] == iv + ciphertext
    assert suite.prepare(EspKeys(key, AUTH_KEY_20)).open(header, sealed) == plaintext


@pytest.mark.parametrize(
    "auth, auth_key, icv",
    [
        (AuthAlgorithm.HMAC_SHA2_256, AUTH_KEY_32, "6f6caeb60b1cdfc835715d342eb67bf2"),
        (AuthAlgorithm.HMAC_SHA1, AUTH_KEY_20, "76f88ee46867c1c313396ab9"),
    ],
)
def test_rfc3602_case7_icv(auth, auth_key, icv):
    # Digest §11.D (self-computed ICVs over SPI | Seq | IV | ciphertext).
    key, header, iv, payload, next_header, ciphertext = rfc3602_packet(7)
    suite = esp_suite(EspTransform.AES_CBC, 128, auth)
    sealed = suite.prepare(EspKeys(key, auth_key)).seal(
        header, esp_plaintext(suite, payload, next_header), iv
    )
    assert sealed == iv + ciphertext + h(icv)


def test_one_context_keeps_cbc_correct_across_packets():
    # The long-lived encryptor/decryptor must behave like a fresh CBC per packet.
    suite = esp_suite(EspTransform.AES_CBC, 256, AuthAlgorithm.HMAC_SHA2_256)
    keys = suite.generate_keys()
    sender, receiver = suite.prepare(keys), suite.prepare(keys)
    ivs = CbcIvSource(16)
    packets = []
    for n in range(1, 6):
        header = (0x1000).to_bytes(4, "big") + n.to_bytes(4, "big")
        plaintext = esp_plaintext(suite, bytes([n]) * (n * 37), 4)
        iv = ivs.next()
        sealed = sender.seal(header, plaintext, iv)
        assert sealed[16 : -suite.icv_size] == cbc.AES.encrypt(keys.encryption, iv, plaintext)
        packets.append((header, sealed, plaintext))
    for header, sealed, plaintext in reversed(packets):  # order-independent on receive
        assert receiver.open(header, sealed) == plaintext


ALL_SUITES = sorted(SUITES.values(), key=lambda s: s.name)


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: s.name)
def test_round_trip_and_tamper(suite):
    keys = suite.generate_keys()
    sender, receiver = suite.prepare(keys), suite.prepare(keys)
    ivs = CounterIvSource(5, 8) if suite.counter_mode else CbcIvSource(suite.iv_size)
    header = bytes.fromhex("0000abcd00000007")
    for size in (0, 1, 40, 1400):
        plaintext = esp_plaintext(suite, b"\x45" * size, 4)
        sealed = sender.seal(header, plaintext, ivs.next())
        assert len(sealed) == suite.iv_size + len(plaintext) + suite.icv_size
        assert receiver.open(header, sealed) == plaintext
    for position in (0, suite.iv_size, len(sealed) - 1):  # IV, ciphertext, ICV
        forged = bytearray(sealed)
        forged[position] ^= 0x01
        with pytest.raises(IntegrityError):
            receiver.open(header, bytes(forged))
    with pytest.raises(IntegrityError):  # the SPI | Seq header is authenticated too
        receiver.open(bytes.fromhex("0000abcd00000008"), sealed)
    assert receiver.open(header, sealed) == plaintext  # failures left no state behind


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: s.name)
def test_alignment(suite):
    block = 16 if suite.transform == EspTransform.AES_CBC else 8
    expected = 4 if suite.counter_mode else block
    assert suite.alignment == expected
    for size in range(0, 40):
        pad = suite.pad_length(size)
        assert 0 <= pad < expected and (size + pad + 2) % expected == 0


def test_gcm_nonce_and_aad_layout():
    # RFC 4106: nonce = salt (last 4 KEYMAT octets) | 8-octet IV, AAD = SPI | Seq.
    suite = esp_suite(EspTransform.AES_GCM_16, 128)
    key, salt = bytes(range(16)), b"SALT"
    iv, header, plaintext = b"IV-8-oct", b"\x00\x00\x01\x00\x00\x00\x00\x09", b"inner packet\x02\x04"
    sealed = suite.prepare(EspKeys(key + salt)).seal(header, plaintext, iv)
    assert sealed == iv + AESGCM(key).encrypt(salt + iv, plaintext, header)


@pytest.mark.parametrize("transform, icv", [(EspTransform.AES_GCM_8, 8), (EspTransform.AES_GCM_12, 12)])
def test_short_gcm_icvs_are_prefixes_of_the_full_tag(transform, icv):
    keys = EspKeys(bytes(range(36)))
    full = esp_suite(EspTransform.AES_GCM_16, 256).prepare(keys)
    short = esp_suite(transform, 256).prepare(keys)
    header, plaintext, iv = bytes(8), b"x" * 20, bytes(8)
    assert short.seal(header, plaintext, iv) == full.seal(header, plaintext, iv)[: 8 + 20 + icv]


# RFC 2202 case 5 ("Test With Truncation") gives the -96 values; 11.B adds case 1.
@pytest.mark.parametrize(
    "auth, key, data, icv",
    [
        (AuthAlgorithm.HMAC_MD5, b"\x0c" * 16, b"Test With Truncation", "56461ef2342edc00f9bab995"),
        (AuthAlgorithm.HMAC_SHA1, b"\x0c" * 20, b"Test With Truncation", "4c1a03424b55e07fe7f27be1"),
        (AuthAlgorithm.HMAC_MD5, b"\x0b" * 16, b"Hi There", "9294727a3638bb1c13f48ef8"),
        (AuthAlgorithm.HMAC_SHA1, b"\x0b" * 20, b"Hi There", "b617318655057264e28bc0b6"),
    ],
)
def test_rfc2202_96_bit_truncation(auth, key, data, icv):
    assert INTEGRITY[auth].keyed(key).icv(data).hex() == icv


# RFC 4868 §2.7.2 authenticator vectors: (key, data, truncated ICV).
JEFE_DATA = b"what do ya want for nothing?"
RFC4868 = {
    AuthAlgorithm.HMAC_SHA2_256: [
        (b"\x0b" * 32, b"Hi There", "198a607eb44bfbc69903a0f1cf2bbdc5"),
        (b"Jefe" * 8, JEFE_DATA, "167f928588c5cc2eef8e3093caa0e87c"),
        (b"\xaa" * 32, b"\xdd" * 50, "cdcb1220d1ecccea91e53aba3092f962"),
        (bytes(range(1, 33)), b"\xcd" * 50, "372efcf9b40b35c2115b1346903d2ef4"),
    ],
    AuthAlgorithm.HMAC_SHA2_384: [
        (b"\x0b" * 48, b"Hi There", "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973"),
        (b"Jefe" * 12, JEFE_DATA, "2c7353974f1842fd66d53c452ca42122b28c0b594cfb184d"),
        (b"\xaa" * 48, b"\xdd" * 50, "809f439be00274321d4a538652164b53554a508184a0c316"),
        (
            bytes(range(1, 33)) + bytes(range(10, 26)),
            b"\xcd" * 50,
            "5b540085c6e6358096532b2493609ed1cb298f774f87bb5c",
        ),
    ],
    AuthAlgorithm.HMAC_SHA2_512: [
        (b"\x0b" * 64, b"Hi There", "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8"),
        (b"Jefe" * 16, JEFE_DATA, "cb370917ae8a7ce28cfd1d8f4705d6141c173b2a9362c15df235dfb251b15454"),
        (b"\xaa" * 64, b"\xdd" * 50, "2ee7acd783624ca9398710f3ee05ae41b9f9b0510c87e49e586cc9bf961733d8"),
        # The RFC prints a stray first key line (0a0b..19) above the 64 octets it states; the
        # published value matches the 64-octet key 0102..40.
        (bytes(range(1, 65)), b"\xcd" * 50, "5e6688e5a3daec826ca32eaea224eff5e700628947470e13ad01302561bab108"),
    ],
}


@pytest.mark.parametrize(
    "auth, key, data, icv",
    [(auth, *vector) for auth, vectors in RFC4868.items() for vector in vectors],
)
def test_rfc4868_authenticators(auth, key, data, icv):
    assert INTEGRITY[auth].keyed(key).icv(data).hex() == icv


def test_suite_registry():
    suite = esp_suite(12, 128, 5)
    assert (suite.name, suite.iv_size, suite.icv_size) == ("AES-128-CBC/HMAC-SHA-256-128", 16, 16)
    assert (suite.encryption_key_size, suite.integrity_key_size) == (16, 32)
    assert esp_suite(EspTransform.TRIPLE_DES, None, AuthAlgorithm.HMAC_SHA1).encryption_key_size == 24
    assert esp_suite(EspTransform.DES, 64, AuthAlgorithm.HMAC_MD5).iv_size == 8
    gcm = esp_suite(EspTransform.AES_GCM_16, 256)
    assert (gcm.encryption_key_size, gcm.integrity_key_size, gcm.icv_size) == (36, 0, 16)
    assert len(SUITES) == (1 + 1 + 3) * 5 + 3 * 3


@pytest.mark.parametrize(
    "transform, key_bits, auth",
    [
        (EspTransform.AES_CBC, None, AuthAlgorithm.HMAC_SHA1),  # AES needs Key Length
        (EspTransform.AES_CBC, 64, AuthAlgorithm.HMAC_SHA1),
        (EspTransform.AES_CBC, 128, None),  # no encryption-only ESP
        (EspTransform.AES_GCM_16, 128, AuthAlgorithm.HMAC_SHA1),  # GCM has no auth attribute
        (EspTransform.NULL, None, AuthAlgorithm.HMAC_SHA1),
        (EspTransform.AES_CBC, 128, AuthAlgorithm.DES_MAC),
        (99, 128, 2),
    ],
)
def test_unsupported_suites(transform, key_bits, auth):
    with pytest.raises(UnsupportedAlgorithm, match="ESP transform"):
        esp_suite(transform, key_bits, auth)


def test_unsupported_suite_says_why():
    with pytest.raises(UnsupportedAlgorithm, match="AES-CBC needs a key length"):
        esp_suite(EspTransform.AES_CBC, None, AuthAlgorithm.HMAC_SHA1)


def test_prepare_checks_key_sizes():
    suite = esp_suite(EspTransform.AES_CBC, 192, AuthAlgorithm.HMAC_SHA2_384)
    with pytest.raises(InvalidKey, match="encryption key must be 24 octets, got 16"):
        suite.prepare(EspKeys(bytes(16), bytes(48)))
    with pytest.raises(InvalidKey, match="HMAC-SHA-384-192 key must be 48 octets"):
        suite.prepare(EspKeys(bytes(24), bytes(32)))
    with pytest.raises(InvalidKey, match="no integrity key"):
        esp_suite(EspTransform.AES_GCM_16, 128).prepare(EspKeys(bytes(20), bytes(20)))


def test_malformed_inputs_are_rejected_before_crypto():
    suite = esp_suite(EspTransform.AES_CBC, 128, AuthAlgorithm.HMAC_SHA1)
    context = suite.prepare(suite.generate_keys())
    with pytest.raises(CryptoError, match="not a positive multiple of 16"):
        context.seal(bytes(8), b"x" * 17, bytes(16))
    with pytest.raises(CryptoError, match="IV must be 16 octets"):
        context.seal(bytes(8), b"x" * 16, bytes(8))
    with pytest.raises(CryptoError, match=re.escape("SPI | Seq")):
        context.seal(bytes(4), b"x" * 16, bytes(16))
    with pytest.raises(CryptoError, match="cannot be IV"):
        context.open(bytes(8), bytes(16 + 12))
    gcm = esp_suite(EspTransform.AES_GCM_16, 128).prepare(EspKeys(bytes(20)))
    with pytest.raises(CryptoError, match="shorter than IV and ICV"):
        gcm.open(bytes(8), bytes(23))


def test_keys_stay_out_of_repr():
    keys = EspKeys(b"\x01" * 16, b"\x02" * 20)
    assert repr(keys) == "EspKeys()"


def test_cbc_iv_source_is_unique_and_sized():
    source = CbcIvSource(8)
    ivs = [source.next() for _ in range(1000)]
    assert len(set(ivs)) == 1000 and {len(iv) for iv in ivs} == {8}
    assert CbcIvSource(16).next() != CbcIvSource(16).next()  # independent random keys


def test_counter_iv_source_prefixes_sid_and_runs_out():
    source = CounterIvSource(sid=0xAB, sid_bits=60)  # 4-bit SSIV: 15 IVs
    ivs = [source.next() for _ in range(15)]
    assert ivs[0] == (0xAB << 4 | 1).to_bytes(8, "big")
    assert ivs[-1] == (0xAB << 4 | 15).to_bytes(8, "big")
    with pytest.raises(IvSpaceExhausted, match="re-register"):
        source.next()
    assert CounterIvSource().next() == (1).to_bytes(8, "big")
    with pytest.raises(InvalidKey, match="SID 256 does not fit in 8 bits"):
        CounterIvSource(256, 8)
