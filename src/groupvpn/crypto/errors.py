"""Exceptions of the crypto layer.

Messages name the algorithm and what was wrong, never the key material:
they end up in logs and in operator output.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base of every error raised by ``groupvpn.crypto``."""


class UnsupportedAlgorithm(CryptoError):
    """A registry value (transform, hash, group...) this implementation does not offer."""


class InvalidKey(CryptoError):
    """Key material of the wrong length or form for its algorithm."""


class InvalidPublicValue(CryptoError):
    """A peer's Diffie-Hellman public value that must be rejected (RFC 2409 §5, RFC 5903 §7)."""


class IntegrityError(CryptoError):
    """An ESP ICV or AEAD tag did not verify."""


class SignatureError(CryptoError):
    """A GROUPKEY-PUSH signature did not verify."""


class IvSpaceExhausted(CryptoError):
    """A sender used up its counter-mode IVs for a TEK and must stop sending on it (RFC 6407 §3.5)."""
