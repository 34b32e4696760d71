"""The IKE SA that Phase 1 leaves behind, and the CBC state of each exchange under it.

An ``IkeSa`` is immutable once Main Mode completes: every later exchange
(informational, GROUPKEY-PULL) derives its own first IV from the last
Phase 1 CBC block and its Message ID, then chains within itself
(RFC 2409 App. B), so concurrent exchanges never disturb each other or the
SA.  ``CbcChain`` is that per-exchange state; Main Mode messages 5 and 6
use one too, seeded with H(g^xi | g^xr).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..crypto.cbc import BlockCipher
from ..crypto.ikev1 import Phase1Keys, exchange_hash, phase2_iv
from ..wire.isakmp import Identification
from ..wire.message import Message, Payload, encode_payloads, first_type
from ..wire.numbers import Flags, HashAlgorithm
from .proposals import Suite

Address = tuple[str, int]


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


@dataclass
class CbcChain:
    """The running IV of one ISAKMP exchange.

    ``seal`` advances it; ``open`` does not, so a message that decrypts but
    then fails its checks leaves the chain where it was (RFC 2409 §10):
    call ``advance`` once the message is accepted.
    """

    cipher: BlockCipher
    key: bytes = field(repr=False)
    iv: bytes = field(repr=False)

    def seal(
        self, icookie: bytes, rcookie: bytes, exchange: int, payloads: Sequence[Payload], message_id: int
    ) -> bytes:
        """The encrypted datagram carrying ``payloads``."""
        ciphertext = self.cipher.encrypt(self.key, self.iv, encode_payloads(payloads))
        self.iv = ciphertext[-self.cipher.block_size :]
        message = Message.sealed(
            icookie, rcookie, exchange, first_type(payloads), ciphertext, message_id=message_id, flags=Flags.ENCRYPTION
        )
        return message.encode()

    def open(self, message: Message) -> tuple[Payload, ...]:
        """Decrypt and decode; raises ``CryptoError`` or ``WireError`` when that fails."""
        plaintext = self.cipher.decrypt(self.key, self.iv, message.ciphertext)
        payloads, _padding = message.decode_plaintext(plaintext)
        return payloads

    def advance(self, message: Message) -> None:
        self.iv = message.ciphertext[-self.cipher.block_size :]


@dataclass(frozen=True)
class IkeSa:
    """An established IKEv1 Phase 1 SA: cookies, keys, algorithms, lifetime.

    The GROUPKEY-PULL code builds on ``exchange`` (a fresh CBC chain for a
    Message ID) and ``hash`` (prf(SKEYID_a, M-ID | parts)).
    """

    role: Role
    icookie: bytes
    rcookie: bytes
    peer: Address
    suite: Suite
    doi: int
    keys: Phase1Keys = field(repr=False)
    cipher_key: bytes = field(repr=False)
    last_block: bytes = field(repr=False)
    local_identity: Identification
    peer_identity: Identification
    established_at: float
    expires_at: float
    peer_supports_dpd: bool = False

    @property
    def cookies(self) -> bytes:
        """CKY-I | CKY-R: the SPI naming this SA in Delete and DPD notifies."""
        return self.icookie + self.rcookie

    @property
    def hash_algorithm(self) -> HashAlgorithm:
        return self.suite.hash

    @property
    def skeyid_d(self) -> bytes:
        return self.keys.skeyid_d

    @property
    def skeyid_a(self) -> bytes:
        return self.keys.skeyid_a

    @property
    def skeyid_e(self) -> bytes:
        return self.keys.skeyid_e

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def phase2_iv(self, message_id: int) -> bytes:
        """H(last Phase 1 CBC block | M-ID), truncated to the block size."""
        return phase2_iv(self.suite.hash, self.last_block, message_id, self.suite.cipher.block_size)

    def exchange(self, message_id: int) -> CbcChain:
        """The CBC state for a new Phase 2 exchange with this Message ID."""
        return CbcChain(self.suite.cipher, self.cipher_key, self.phase2_iv(message_id))

    def hash(self, message_id: int, *parts: bytes) -> bytes:
        """prf(SKEYID_a, M-ID | parts): HASH(1) of informational and GDOI exchanges."""
        return exchange_hash(self.suite.hash, self.keys.skeyid_a, message_id, *parts)

    def seal(self, exchange: int, payloads: Sequence[Payload], message_id: int) -> bytes:
        """A one-message Phase 2 exchange (e.g. an informational) encrypted under ``message_id``."""
        return self.exchange(message_id).seal(self.icookie, self.rcookie, exchange, payloads, message_id)
