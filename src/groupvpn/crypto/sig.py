"""GROUPKEY-PUSH signatures (RFC 6407 §4, §5.3.5-5.3.6, §5.6.2).

The key server signs H = SIG_HASH("rekey" | signed bytes); which bytes are
signed (header field values, payload order) is the PUSH builder's business,
so ``SignatureScheme`` takes them as given.

* SIG_ALG_RSA is EMSA-PKCS1-v1_5, i.e. H wrapped in a DigestInfo
  (§5.3.6.1).  The Cisco-derived reference implementation pads the bare
  hash instead (digest §8.10); ``RsaEncoding.BARE_HASH`` offers that.
* SIG_ALG_ECDSA-256/384/521 imply SHA-256/384/512 and carry r | s with
  fixed-length halves (§5.3.6.4-6, RFC 4754).

Public keys travel in SIG_ALGORITHM_KEY as DER SubjectPublicKeyInfo, the
encoding of the reference implementation (AMBIGUOUS in the RFC, digest §8.7).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from enum import Enum

from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as UnsupportedKeyType
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    NoDigestInfo,
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from ..wire.numbers import SigAlgorithm, SigHashAlgorithm
from .errors import InvalidKey, SignatureError, UnsupportedAlgorithm

REKEY_PREFIX = b"rekey"
MIN_RSA_BITS = 1024  # accepted from peers; RFC 6407 §6 wants 2048 for new keys
DEFAULT_RSA_BITS = 2048


class RsaEncoding(Enum):
    DIGEST_INFO = "digest-info"  # EMSA-PKCS1-v1_5, as RFC 6407 §5.3.6.1 says
    BARE_HASH = "bare-hash"  # PKCS#1 type 1 padding around H alone (gdoid/Cisco)


_HASHES: dict[SigHashAlgorithm, type[hashes.HashAlgorithm]] = {
    SigHashAlgorithm.SHA1: hashes.SHA1,
    SigHashAlgorithm.SHA256: hashes.SHA256,
    SigHashAlgorithm.SHA384: hashes.SHA384,
    SigHashAlgorithm.SHA512: hashes.SHA512,
}

# ECDSA algorithm -> (curve, implied hash, octets of r and of s).
_ECDSA: dict[SigAlgorithm, tuple[ec.EllipticCurve, SigHashAlgorithm, int]] = {
    SigAlgorithm.ECDSA_256: (ec.SECP256R1(), SigHashAlgorithm.SHA256, 32),
    SigAlgorithm.ECDSA_384: (ec.SECP384R1(), SigHashAlgorithm.SHA384, 48),
    SigAlgorithm.ECDSA_521: (ec.SECP521R1(), SigHashAlgorithm.SHA512, 66),
}


@dataclass(frozen=True)
class SignatureScheme:
    """What the SA KEK's SIG_ALGORITHM / SIG_HASH_ALGORITHM attributes select."""

    algorithm: SigAlgorithm
    hash: SigHashAlgorithm
    rsa_encoding: RsaEncoding = RsaEncoding.DIGEST_INFO

    def digest(self, signed: bytes) -> bytes:
        """H = SIG_HASH("rekey" | signed)."""
        h = hashes.Hash(_HASHES[self.hash]())
        h.update(REKEY_PREFIX)
        h.update(signed)
        return h.finalize()


def _prehashed(scheme: SignatureScheme) -> Prehashed:
    return Prehashed(_HASHES[scheme.hash]())


def signature_scheme(
    algorithm: int,
    hash_: int | None = None,
    rsa_encoding: RsaEncoding = RsaEncoding.DIGEST_INFO,
) -> SignatureScheme:
    """The scheme for SIG_ALGORITHM and the optional SIG_HASH_ALGORITHM.

    RSA needs the hash attribute; ECDSA implies its hash, and an explicit
    one must agree with it.
    """
    try:
        sig = SigAlgorithm(algorithm)
    except ValueError:
        raise UnsupportedAlgorithm(f"SIG_ALGORITHM {algorithm} is not supported") from None
    if sig in _ECDSA:
        implied = _ECDSA[sig][1]
        if hash_ is not None and hash_ != implied:
            raise UnsupportedAlgorithm(
                f"{sig.name} implies SIG_HASH {implied.name}, not {hash_}"
            )
        return SignatureScheme(sig, implied)
    if sig is not SigAlgorithm.RSA:
        raise UnsupportedAlgorithm(f"SIG_ALGORITHM {sig.name} is not supported")
    if hash_ is None:
        raise UnsupportedAlgorithm("SIG_ALG_RSA needs a SIG_HASH_ALGORITHM")
    if hash_ not in _HASHES:
        raise UnsupportedAlgorithm(f"SIG_HASH_ALGORITHM {hash_} is not supported")
    return SignatureScheme(sig, SigHashAlgorithm(hash_), rsa_encoding)


def _check_key_fits(scheme: SignatureScheme, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> None:
    if scheme.algorithm is SigAlgorithm.RSA:
        if not isinstance(key, rsa.RSAPublicKey):
            raise InvalidKey("SIG_ALG_RSA needs an RSA key")
        return
    curve = _ECDSA[scheme.algorithm][0]
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != curve.name:
        raise InvalidKey(f"{scheme.algorithm.name} needs a {curve.name} key")


def _verify_rsa(
    key: rsa.RSAPublicKey, scheme: SignatureScheme, digest: bytes, signature: bytes
) -> None:
    if scheme.rsa_encoding is RsaEncoding.DIGEST_INFO:
        key.verify(signature, digest, padding.PKCS1v15(), _prehashed(scheme))
        return
    recovered = key.recover_data_from_signature(signature, padding.PKCS1v15(), NoDigestInfo())
    if not hmac.compare_digest(recovered, digest):
        raise InvalidSignature


@dataclass(frozen=True)
class VerifyingKey:
    """The key server's public key, as a group member learns it from SIG_ALGORITHM_KEY."""

    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey

    @classmethod
    def from_spki(cls, der: bytes) -> VerifyingKey:
        """Decode DER SubjectPublicKeyInfo, strictly: canonical DER, a supported key type and size."""
        try:
            key = serialization.load_der_public_key(der)
        except (ValueError, UnsupportedKeyType):
            raise InvalidKey("SIG_ALGORITHM_KEY is not a DER SubjectPublicKeyInfo") from None
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < MIN_RSA_BITS:
                raise InvalidKey(f"RSA key of {key.key_size} bits is below {MIN_RSA_BITS}")
        elif not (
            isinstance(key, ec.EllipticCurvePublicKey)
            and any(curve.name == key.curve.name for curve, _, _ in _ECDSA.values())
        ):
            raise InvalidKey("SIG_ALGORITHM_KEY holds neither RSA nor a P-256/384/521 key")
        verifying = cls(key)
        if verifying.spki != der:
            raise InvalidKey("SIG_ALGORITHM_KEY is not canonical DER")
        return verifying

    @property
    def spki(self) -> bytes:
        """DER SubjectPublicKeyInfo, as SIG_ALGORITHM_KEY carries it."""
        return self.key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def key_bits(self) -> int:
        """The SIG_KEY_LENGTH attribute value."""
        return self.key.key_size

    def signature_size(self, scheme: SignatureScheme) -> int:
        """SIG data octets: the RSA modulus, or r | s of the curve's size for ECDSA (§5.3.6)."""
        _check_key_fits(scheme, self.key)
        if isinstance(self.key, rsa.RSAPublicKey):
            return (self.key.key_size + 7) // 8
        return 2 * _ECDSA[scheme.algorithm][2]

    def verify(self, scheme: SignatureScheme, signed: bytes, signature: bytes) -> None:
        """Raise SignatureError unless ``signature`` is the key server's over ``signed``."""
        expected = self.signature_size(scheme)
        if len(signature) != expected:
            layout = "modulus length" if scheme.algorithm is SigAlgorithm.RSA else "r | s"
            raise SignatureError(
                f"{scheme.algorithm.name} signature is {len(signature)} octets, expected {expected} ({layout})"
            )
        digest = scheme.digest(signed)
        try:
            if isinstance(self.key, rsa.RSAPublicKey):
                _verify_rsa(self.key, scheme, digest, signature)
            else:
                size = expected // 2
                der = encode_dss_signature(
                    int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
                )
                self.key.verify(der, digest, ec.ECDSA(_prehashed(scheme)))
        except InvalidSignature:
            raise SignatureError(f"{scheme.algorithm.name} signature does not verify") from None

@dataclass(frozen=True)
class SigningKey:
    """The key server's private push-signing key (not its Phase 1 key, RFC 6407 §4.1)."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def generate(cls, algorithm: SigAlgorithm, rsa_bits: int = DEFAULT_RSA_BITS) -> SigningKey:
        if algorithm is SigAlgorithm.RSA:
            return cls(rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits))
        if algorithm in _ECDSA:
            return cls(ec.generate_private_key(_ECDSA[algorithm][0]))
        raise UnsupportedAlgorithm(f"cannot generate keys for SIG_ALGORITHM {algorithm}")

    @classmethod
    def from_pem(cls, data: bytes, password: bytes | None = None) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password)
        except (ValueError, TypeError, UnsupportedKeyType):
            raise InvalidKey("not a readable PEM private key (or wrong password)") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise InvalidKey("PEM private key is neither RSA nor EC")
        signing = cls(key)
        VerifyingKey.from_spki(signing.public.spki)  # same type and size rules as peers'
        return signing

    def to_pem(self, password: bytes | None = None) -> bytes:
        """PKCS#8 PEM, encrypted when a password is given (for the key server's store)."""
        encryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @property
    def public(self) -> VerifyingKey:
        return VerifyingKey(self.key.public_key())

    def sign(self, scheme: SignatureScheme, signed: bytes) -> bytes:
        """The SIG payload data for ``signed``."""
        _check_key_fits(scheme, self.key.public_key())
        digest = scheme.digest(signed)
        if isinstance(self.key, rsa.RSAPrivateKey):
            encoding = (
                _prehashed(scheme)
                if scheme.rsa_encoding is RsaEncoding.DIGEST_INFO
                else NoDigestInfo()
            )
            return self.key.sign(digest, padding.PKCS1v15(), encoding)
        r, s = decode_dss_signature(self.key.sign(digest, ec.ECDSA(_prehashed(scheme))))
        size = _ECDSA[scheme.algorithm][2]
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
