"""CBC ciphers for ISAKMP messages and GDOI KEKs (RFC 2409 App. B; RFC 6407 §5.3.2).

These encrypt whole control messages, a few per second, so a cipher object
per call is fine here (the ESP data plane uses ``suites`` instead).  ISAKMP
pads with zero octets to the block size and the receiver finds the end of
the data from the payload chain, so ``decrypt`` returns the padded plaintext.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# (3)DES lives in "decrepit" since cryptography 43; the old location is gone in 48.
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes

from ..wire.numbers import EncryptionAlgorithm, KekAlgorithm
from .errors import CryptoError, InvalidKey, UnsupportedAlgorithm


def _des(key: bytes) -> BlockCipherAlgorithm:
    # Single DES is 3DES with K1 = K2 = K3 (EDE collapses to one encryption).
    return TripleDES(key * 3)


def _aes(key: bytes) -> BlockCipherAlgorithm:
    return algorithms.AES(key)


@dataclass(frozen=True)
class BlockCipher:
    """A block cipher family: its block size, legal key sizes and a factory."""

    name: str
    block_size: int
    key_sizes: tuple[int, ...]  # octets, smallest first
    algorithm: Callable[[bytes], BlockCipherAlgorithm]

    def key_size(self, key_length_bits: int | None) -> int:
        """Key octets for a Key Length attribute value (None when absent).

        The attribute is mandatory for variable-length ciphers (AES,
        RFC 3602 §5.3) and optional for fixed ones.
        """
        if key_length_bits is None:
            if len(self.key_sizes) != 1:
                raise InvalidKey(f"{self.name} needs a key length")
            return self.key_sizes[0]
        if key_length_bits % 8 or key_length_bits // 8 not in self.key_sizes:
            raise InvalidKey(f"{self.name} has no {key_length_bits}-bit keys")
        return key_length_bits // 8

    def check_key(self, key: bytes) -> None:
        if len(key) not in self.key_sizes:
            raise InvalidKey(f"{self.name} key must be {_octets(self.key_sizes)}, got {len(key)}")

    def check_iv(self, iv: bytes) -> None:
        if len(iv) != self.block_size:
            raise InvalidKey(f"{self.name} IV must be {self.block_size} octets, got {len(iv)}")

    def pad(self, data: bytes) -> bytes:
        """``data`` zero-padded to a whole number of blocks (RFC 2409 App. B)."""
        return data + bytes(-len(data) % self.block_size)

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes) -> bytes:
        """CBC-encrypt ``plaintext`` after zero padding; the next IV is the last block."""
        encryptor = self._cipher(key, iv).encryptor()
        return encryptor.update(self.pad(plaintext)) + encryptor.finalize()

    def decrypt(self, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
        """CBC-decrypt; the result still carries the sender's padding."""
        if not ciphertext or len(ciphertext) % self.block_size:
            raise CryptoError(
                f"{self.name} ciphertext of {len(ciphertext)} octets is not a "
                f"positive multiple of the {self.block_size}-octet block"
            )
        decryptor = self._cipher(key, iv).decryptor()
        return decryptor.update(ciphertext) + decryptor.finalize()

    def _cipher(self, key: bytes, iv: bytes) -> Cipher:
        self.check_key(key)
        self.check_iv(iv)
        return Cipher(self.algorithm(key), modes.CBC(iv))


def _octets(sizes: tuple[int, ...]) -> str:
    return " or ".join(str(s) for s in sizes) + " octets"


DES = BlockCipher("DES-CBC", 8, (8,), _des)
TRIPLE_DES = BlockCipher("3DES-CBC", 8, (24,), TripleDES)
AES = BlockCipher("AES-CBC", 16, (16, 24, 32), _aes)

_IKE = {
    EncryptionAlgorithm.DES_CBC: DES,
    EncryptionAlgorithm.TRIPLE_DES_CBC: TRIPLE_DES,
    EncryptionAlgorithm.AES_CBC: AES,
}
_KEK = {KekAlgorithm.DES: DES, KekAlgorithm.TRIPLE_DES: TRIPLE_DES, KekAlgorithm.AES: AES}


def ike_cipher(algorithm: int) -> BlockCipher:
    """The Phase 1 cipher for an Encryption Algorithm attribute value."""
    try:
        return _IKE[EncryptionAlgorithm(algorithm)]
    except (ValueError, KeyError):
        raise UnsupportedAlgorithm(f"IKE encryption algorithm {algorithm} is not supported") from None


def kek_cipher(algorithm: int) -> BlockCipher:
    """The GROUPKEY-PUSH cipher for a KEK_ALGORITHM value (all CBC, RFC 6407 §5.3.2)."""
    try:
        return _KEK[KekAlgorithm(algorithm)]
    except (ValueError, KeyError):
        raise UnsupportedAlgorithm(f"KEK algorithm {algorithm} is not supported") from None
