"""ISAKMP/KEK CBC ciphers: RFC 3602 §4 cases #1-#4, FIPS 81 DES, SP 800-67 3DES, zero padding."""

from __future__ import annotations

import pytest

from groupvpn.crypto import cbc
from groupvpn.crypto.errors import CryptoError, InvalidKey, UnsupportedAlgorithm
from groupvpn.wire.numbers import EncryptionAlgorithm, KekAlgorithm

RFC3602 = [  # (key, IV, plaintext, ciphertext)
    (
        "06a9214036b8a15b512e03d534120006",
        "3dafba429d9eb430b422da802c9fac41",
        b"Single block msg".hex(),
        "e353779c1079aeb82708942dbe77181a",
    ),
    (
        "c286696d887c9aa0611bbb3e2025a45a",
        "562e17996d093d28ddb3ba695a2e6f58",
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1",
    ),
    (
        "6c3ea0477630ce21a2ce334aa746c2cd",
        "c782dc4c098c66cbd9cd27d825682c81",
        b"This is a 48-byte message (exactly 3 AES blocks)".hex(),
        "d0a02b3836451753d493665d33f0e8862dea54cdb293abc7506939276772f8d5"
        "021c19216bad525c8579695d83ba2684",
    ),
    (
        "56e47a38c5598974bc46903dba290349",
        "8ce82eefbea0da3c44699ed7db51b7d9",
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
        "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf",
        "c30e32ffedc0774e6aff6af0869f71aa0f3af07a9a31a9c684db207eb0ef8e4e"
        "35907aa632c3ffdf868bb7b29d3d46ad83ce9f9a102ee99d49a53e87f4c3da55",
    ),
]


@pytest.mark.parametrize("case", range(1, 5))
def test_rfc3602_aes_cbc(case):
    key, iv, plaintext, ciphertext = (bytes.fromhex(v) for v in RFC3602[case - 1])
    assert cbc.AES.encrypt(key, iv, plaintext) == ciphertext
    assert cbc.AES.decrypt(key, iv, ciphertext) == plaintext


def test_fips81_des_cbc():
    key, iv = bytes.fromhex("0123456789abcdef"), bytes.fromhex("1234567890abcdef")
    ciphertext = bytes.fromhex("e5c7cdde872bf27c43e934008c389c0f683788499a7c05f6")
    assert cbc.DES.encrypt(key, iv, b"Now is the time for all ") == ciphertext
    assert cbc.DES.decrypt(key, iv, ciphertext) == b"Now is the time for all "


def test_sp800_67_triple_des():
    # SP 800-67 example (ECB); CBC with a zero IV on a single block is ECB.
    key = bytes.fromhex("0123456789abcdef23456789abcdef01456789abcdef0123")
    plaintext = b"The qufck brown fox jump"
    blocks = [cbc.TRIPLE_DES.encrypt(key, bytes(8), plaintext[i : i + 8]) for i in (0, 8, 16)]
    assert b"".join(blocks).hex() == "a826fd8ce53b855fcce21c8112256fe668d5c05dd9b6b900"


@pytest.mark.parametrize("cipher", [cbc.DES, cbc.TRIPLE_DES, cbc.AES], ids=lambda c: c.name)
def test_zero_padding_and_padded_decrypt(cipher):
    key, iv = b"K" * cipher.key_sizes[-1], b"I" * cipher.block_size
    message = b"payload chain" * 3
    ciphertext = cipher.encrypt(key, iv, message)
    assert len(ciphertext) % cipher.block_size == 0 and len(ciphertext) >= len(message)
    padded = cipher.decrypt(key, iv, ciphertext)
    assert padded == cipher.pad(message) == message + bytes(len(padded) - len(message))
    assert cipher.pad(b"x" * cipher.block_size) == b"x" * cipher.block_size


def test_iv_chaining_across_messages():
    # Phase 1 chains: the next message's IV is the previous ciphertext's last block.
    key, iv = b"k" * 16, b"i" * 16
    first = cbc.AES.encrypt(key, iv, b"message five")
    second = cbc.AES.encrypt(key, first[-16:], b"message six")
    both = cbc.AES.encrypt(key, iv, cbc.AES.pad(b"message five") + b"message six")
    assert both == first + second


def test_rejects_bad_lengths():
    with pytest.raises(InvalidKey, match="AES-CBC key must be 16 or 24 or 32 octets, got 15"):
        cbc.AES.encrypt(b"k" * 15, b"i" * 16, b"x")
    with pytest.raises(InvalidKey, match="IV must be 8 octets"):
        cbc.TRIPLE_DES.encrypt(b"k" * 24, b"i" * 16, b"x")
    with pytest.raises(CryptoError, match="not a positive multiple"):
        cbc.AES.decrypt(b"k" * 16, b"i" * 16, b"c" * 17)
    with pytest.raises(CryptoError, match="not a positive multiple"):
        cbc.AES.decrypt(b"k" * 16, b"i" * 16, b"")


def test_key_length_attribute():
    assert cbc.AES.key_size(256) == 32
    assert cbc.TRIPLE_DES.key_size(None) == 24
    assert cbc.TRIPLE_DES.key_size(192) == 24
    with pytest.raises(InvalidKey, match="needs a key length"):
        cbc.AES.key_size(None)
    with pytest.raises(InvalidKey, match="no 100-bit keys"):
        cbc.AES.key_size(100)


def test_registries():
    assert cbc.ike_cipher(EncryptionAlgorithm.AES_CBC) is cbc.AES
    assert cbc.ike_cipher(5) is cbc.TRIPLE_DES
    assert cbc.ike_cipher(EncryptionAlgorithm.DES_CBC) is cbc.DES
    assert cbc.kek_cipher(KekAlgorithm.AES) is cbc.AES
    assert cbc.kek_cipher(KekAlgorithm.TRIPLE_DES) is cbc.TRIPLE_DES
    assert cbc.kek_cipher(KekAlgorithm.DES) is cbc.DES
    with pytest.raises(UnsupportedAlgorithm, match="IKE encryption algorithm 3"):
        cbc.ike_cipher(EncryptionAlgorithm.BLOWFISH_CBC)
    with pytest.raises(UnsupportedAlgorithm, match="KEK algorithm 9"):
        cbc.kek_cipher(9)
