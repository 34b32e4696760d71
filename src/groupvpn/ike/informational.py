"""Informational exchanges: notifies and deletes, protected or in clear (RFC 2409 §5.7).

Under an IKE SA an informational is ``HDR*, HASH(1), N/D`` with
HASH(1) = prf(SKEYID_a, M-ID | N/D) and its own IV from the M-ID.  Before
Phase 1 completes there are no keys, so error notifies go in clear without
HASH; receivers treat those as unauthenticated hints.  DPD (RFC 3706) rides
on protected notifies; its figure puts HASH last, so the HASH is accepted
first or last and always covers every other payload as sent.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ..wire.isakmp import Delete, Hash, Notify
from ..wire.message import Message, Payload, encode_each
from ..wire.numbers import ExchangeType, NotifyType, ProtocolId
from .sa import IkeSa

DPD_SEQUENCE_SIZE = 4


class InformationalError(ValueError):
    """A protected informational that must be dropped (no HASH, HASH mismatch, stray payloads)."""


def notify(sa: IkeSa, notify_type: int, data: bytes = b"") -> Notify:
    """A notify about ``sa`` itself: ISAKMP protocol, SPI = CKY-I | CKY-R."""
    return Notify(notify_type, sa.doi, ProtocolId.ISAKMP, sa.cookies, data)


def delete_sa(sa: IkeSa) -> Delete:
    """The Delete payload for the IKE SA (RFC 2408 §3.15: SPI = CKY-I | CKY-R)."""
    return Delete(sa.doi, ProtocolId.ISAKMP, len(sa.cookies), (sa.cookies,))


def r_u_there(sa: IkeSa, sequence: int, ack: bool = False) -> Notify:
    kind = NotifyType.R_U_THERE_ACK if ack else NotifyType.R_U_THERE
    return notify(sa, kind, sequence.to_bytes(DPD_SEQUENCE_SIZE, "big"))


def protected(sa: IkeSa, payload: Notify | Delete, message_id: int) -> bytes:
    """``HDR*, HASH(1), N/D`` under ``sa`` with a fresh ``message_id``."""
    digest = sa.hash(message_id, payload.encode())
    return sa.seal(ExchangeType.INFORMATIONAL, (Hash(digest), payload), message_id)


def clear_notify(icookie: bytes, rcookie: bytes, payload: Notify, message_id: int) -> bytes:
    """``HDR, N`` for errors before there are keys to protect them."""
    return Message.build(icookie, rcookie, ExchangeType.INFORMATIONAL, (payload,), message_id=message_id).encode()


@dataclass(frozen=True, slots=True)
class Informational:
    """The authenticated contents of a protected informational."""

    message_id: int
    notifies: tuple[Notify, ...]
    deletes: tuple[Delete, ...]


def open_protected(sa: IkeSa, message: Message) -> Informational:
    """Decrypt and authenticate an informational received under ``sa``.

    Raises ``InformationalError`` (or the codec's/cipher's errors) when the
    message must be dropped.
    """
    mid = message.header.message_id
    if mid == 0:
        raise InformationalError("protected informational with Message ID 0")
    payloads = sa.exchange(mid).open(message)
    covered = _hashed_payloads(payloads)
    hashes = [p for p in payloads if isinstance(p, Hash)]
    if len(hashes) != 1:
        raise InformationalError(f"{len(hashes)} HASH payloads, expected 1")
    if not hmac.compare_digest(hashes[0].data, sa.hash(mid, covered)):
        raise InformationalError("HASH(1) mismatch")
    notifies = tuple(p for p in payloads if isinstance(p, Notify))
    deletes = tuple(p for p in payloads if isinstance(p, Delete))
    if len(notifies) + len(deletes) + 1 != len(payloads):
        raise InformationalError("payloads other than HASH, NOTIFY and DELETE")
    return Informational(mid, notifies, deletes)


def _hashed_payloads(payloads: tuple[Payload, ...]) -> bytes:
    """The octets HASH(1) covers: every payload after a leading HASH, or before a trailing one."""
    encoded = encode_each(payloads)
    if payloads and isinstance(payloads[0], Hash):
        return b"".join(encoded[1:])
    if payloads and isinstance(payloads[-1], Hash):
        return b"".join(encoded[:-1])
    raise InformationalError("HASH is neither the first nor the last payload")
