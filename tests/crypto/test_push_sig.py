"""GROUPKEY-PUSH signatures: encodings checked by hand, tamper, PEM and SPKI handling."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from groupvpn.crypto.errors import InvalidKey, SignatureError, UnsupportedAlgorithm
from groupvpn.crypto.sig import (
    RsaEncoding,
    SigningKey,
    VerifyingKey,
    signature_scheme,
)
from groupvpn.wire.numbers import SigAlgorithm, SigHashAlgorithm

SIGNED = b"HDR|SEQ|SA|KD as they go on the wire"

# DigestInfo prefixes from RFC 8017 §9.2, note 1.
DIGEST_INFO = {
    SigHashAlgorithm.SHA1: "3021300906052b0e03021a05000414",
    SigHashAlgorithm.SHA256: "3031300d060960864801650304020105000420",
}


@pytest.fixture(scope="module")
def rsa_key():
    return SigningKey.generate(SigAlgorithm.RSA)


def encoded_message(public: VerifyingKey, signature: bytes) -> bytes:
    """RSA public operation: the EMSA-PKCS1-v1_5 block the signer padded."""
    numbers = public.key.public_numbers()
    size = (numbers.n.bit_length() + 7) // 8
    return pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(size, "big")


@pytest.mark.parametrize(
    "hash_, name", [(SigHashAlgorithm.SHA1, "sha1"), (SigHashAlgorithm.SHA256, "sha256")]
)
@pytest.mark.parametrize("encoding", list(RsaEncoding))
def test_rsa_encodings(rsa_key, hash_, name, encoding):
    scheme = signature_scheme(SigAlgorithm.RSA, hash_, encoding)
    signature = rsa_key.sign(scheme, SIGNED)
    assert len(signature) == rsa_key.public.signature_size(scheme) == 256  # SIG payload = 4 + modulus length
    h = hashlib.new(name, b"rekey" + SIGNED).digest()
    assert scheme.digest(SIGNED) == h
    prefix = bytes.fromhex(DIGEST_INFO[hash_]) if encoding is RsaEncoding.DIGEST_INFO else b""
    t = prefix + h
    assert encoded_message(rsa_key.public, signature) == (
        b"\x00\x01" + b"\xff" * (256 - 3 - len(t)) + b"\x00" + t
    )
    rsa_key.public.verify(scheme, SIGNED, signature)


def test_rsa_encodings_do_not_cross_verify(rsa_key):
    standard = signature_scheme(SigAlgorithm.RSA, SigHashAlgorithm.SHA256)
    bare = signature_scheme(SigAlgorithm.RSA, SigHashAlgorithm.SHA256, RsaEncoding.BARE_HASH)
    with pytest.raises(SignatureError):
        rsa_key.public.verify(bare, SIGNED, rsa_key.sign(standard, SIGNED))
    with pytest.raises(SignatureError):
        rsa_key.public.verify(standard, SIGNED, rsa_key.sign(bare, SIGNED))


@pytest.mark.parametrize("encoding", list(RsaEncoding))
def test_rsa_tamper(rsa_key, encoding):
    scheme = signature_scheme(SigAlgorithm.RSA, SigHashAlgorithm.SHA256, encoding)
    signature = rsa_key.sign(scheme, SIGNED)
    with pytest.raises(SignatureError, match="does not verify"):
        rsa_key.public.verify(scheme, SIGNED + b"!", signature)
    forged = bytearray(signature)
    forged[100] ^= 0x10
    with pytest.raises(SignatureError, match="does not verify"):
        rsa_key.public.verify(scheme, SIGNED, bytes(forged))
    with pytest.raises(SignatureError, match="expected 256 \\(modulus length\\)"):
        rsa_key.public.verify(scheme, SIGNED, signature[1:])
    other = SigningKey.generate(SigAlgorithm.RSA)
    with pytest.raises(SignatureError):
        other.public.verify(scheme, SIGNED, signature)


@pytest.mark.parametrize(
    "algorithm, curve, name, size",
    [
        (SigAlgorithm.ECDSA_256, ec.SECP256R1, "sha256", 32),
        (SigAlgorithm.ECDSA_384, ec.SECP384R1, "sha384", 48),
        (SigAlgorithm.ECDSA_521, ec.SECP521R1, "sha512", 66),
    ],
)
def test_ecdsa_r_s_format_and_tamper(algorithm, curve, name, size):
    key = SigningKey.generate(algorithm)
    scheme = signature_scheme(algorithm)
    assert scheme.digest(SIGNED) == hashlib.new(name, b"rekey" + SIGNED).digest()
    signature = key.sign(scheme, SIGNED)
    assert len(signature) == key.public.signature_size(scheme) == 2 * size
    key.public.verify(scheme, SIGNED, signature)
    assert int.from_bytes(signature[:size], "big") and int.from_bytes(signature[size:], "big")
    with pytest.raises(SignatureError, match="does not verify"):
        key.public.verify(scheme, SIGNED + b"!", signature)
    swapped = signature[size:] + signature[:size]
    with pytest.raises(SignatureError, match="does not verify"):
        key.public.verify(scheme, SIGNED, swapped)
    with pytest.raises(SignatureError, match=f"expected {2 * size} \\(r \\| s\\)"):
        key.public.verify(scheme, SIGNED, signature + b"\x00")


def test_scheme_and_key_must_match(rsa_key):
    ecdsa = SigningKey.generate(SigAlgorithm.ECDSA_256)
    with pytest.raises(InvalidKey, match="needs an RSA key"):
        ecdsa.sign(signature_scheme(SigAlgorithm.RSA, SigHashAlgorithm.SHA256), SIGNED)
    with pytest.raises(InvalidKey, match="needs a secp384r1 key"):
        ecdsa.sign(signature_scheme(SigAlgorithm.ECDSA_384), SIGNED)
    with pytest.raises(InvalidKey, match="needs a secp256r1 key"):
        rsa_key.public.verify(signature_scheme(SigAlgorithm.ECDSA_256), SIGNED, bytes(64))


def test_scheme_lookup():
    assert signature_scheme(SigAlgorithm.ECDSA_384, SigHashAlgorithm.SHA384).hash is SigHashAlgorithm.SHA384
    assert signature_scheme(1, 4).hash is SigHashAlgorithm.SHA384
    with pytest.raises(UnsupportedAlgorithm, match="implies SIG_HASH SHA256"):
        signature_scheme(SigAlgorithm.ECDSA_256, SigHashAlgorithm.SHA1)
    with pytest.raises(UnsupportedAlgorithm, match="needs a SIG_HASH_ALGORITHM"):
        signature_scheme(SigAlgorithm.RSA)
    with pytest.raises(UnsupportedAlgorithm, match="SIG_HASH_ALGORITHM 1 is not"):
        signature_scheme(SigAlgorithm.RSA, SigHashAlgorithm.MD5)
    with pytest.raises(UnsupportedAlgorithm, match="DSS"):
        signature_scheme(SigAlgorithm.DSS, SigHashAlgorithm.SHA1)
    with pytest.raises(UnsupportedAlgorithm, match="SIG_ALGORITHM 200"):
        signature_scheme(200, 3)


@pytest.mark.parametrize("algorithm", [SigAlgorithm.RSA, SigAlgorithm.ECDSA_256])
def test_spki_round_trip(rsa_key, algorithm):
    key = rsa_key if algorithm is SigAlgorithm.RSA else SigningKey.generate(algorithm)
    der = key.public.spki
    assert der[0] == 0x30  # a DER SEQUENCE
    decoded = VerifyingKey.from_spki(der)
    assert decoded.spki == der
    assert decoded.key_bits == (2048 if algorithm is SigAlgorithm.RSA else 256)


def test_spki_validation(rsa_key):
    der = rsa_key.public.spki
    with pytest.raises(InvalidKey, match="not a DER SubjectPublicKeyInfo"):
        VerifyingKey.from_spki(der[:-1])
    with pytest.raises(InvalidKey):
        VerifyingKey.from_spki(der + b"\x00")
    with pytest.raises(InvalidKey, match="not a DER SubjectPublicKeyInfo"):
        VerifyingKey.from_spki(b"\x04" + bytes(64))  # a raw point is not an SPKI
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    p224 = ec.generate_private_key(ec.SECP224R1()).public_key()
    for key in (ed, p224):
        spki = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(InvalidKey, match="neither RSA nor a P-256/384/521"):
            VerifyingKey.from_spki(spki)
    small = rsa.RSAPublicNumbers(65537, (1 << 511) | 0x1234567).public_key()
    with pytest.raises(InvalidKey, match="512 bits is below 1024"):
        VerifyingKey.from_spki(
            small.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )


def test_pem_load(rsa_key):
    scheme = signature_scheme(SigAlgorithm.RSA, SigHashAlgorithm.SHA256)
    pkcs1 = rsa_key.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    for pem in (rsa_key.to_pem(), pkcs1):
        loaded = SigningKey.from_pem(pem)
        assert loaded.public.spki == rsa_key.public.spki
        rsa_key.public.verify(scheme, SIGNED, loaded.sign(scheme, SIGNED))
    encrypted = rsa_key.to_pem(b"store password")
    assert b"ENCRYPTED" in encrypted
    assert SigningKey.from_pem(encrypted, b"store password").public.spki == rsa_key.public.spki
    with pytest.raises(InvalidKey, match="wrong password"):
        SigningKey.from_pem(encrypted, b"guess")
    with pytest.raises(InvalidKey, match="not a readable PEM"):
        SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidKey, match="neither RSA nor EC"):
        SigningKey.from_pem(ed)


def test_private_key_stays_out_of_repr(rsa_key):
    assert repr(rsa_key) == "SigningKey()"


def test_generate_rejects_unsupported_algorithm():
    with pytest.raises(UnsupportedAlgorithm, match="cannot generate"):
        SigningKey.generate(SigAlgorithm.DSS)
