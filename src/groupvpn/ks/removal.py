"""Removing a member from a group: what the removed member is pushed, and refusing its return.

The seed describes two ways for a key server to drop a member, both ending
with the member's re-registration being refused:

* ``delete``: a push with Delete payloads for the SPIs of its SAs -- here
  every current TEK and the KEK (RFC 6407 §5.9), so the member holds no
  group key afterwards -- which it applies at once, then tries to
  re-register;
* ``dtd``: a rekey message with only the old SAs (the current SA TEKs and
  their keys, which it already holds, no SA KEK) and a GAP whose
  deactivation time delay is smaller than the group's; the member lets its
  SAs go after that delay, has no new keys, and tries to re-register.

Either push goes to the removed member alone.  It is encrypted under the
group KEK, the only key a push can use, so the removed member still holds
that KEK; ``RekeyEngine.remove_member`` therefore also replaces the KEK and
every TEK for the members that remain.  The member is marked removed in
the store before anything is sent, so from then on its PULL is refused
(``removal_refusal`` for message 1, and the store refuses to register it
again) until the administrator re-authorizes it.
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum

from ..gdoi.policy import GroupAssociatedPolicy, GroupPolicy
from ..gdoi.pull import Refusal
from ..wire.gdoi import KEK_SPI_SIZE, TEK_SPI_SIZE
from ..wire.isakmp import Delete
from ..wire.numbers import DOI, GdoiProtocol, NotifyType
from .keys import GroupKeys, KeySet
from .store import KeyStore, MemberState

DEFAULT_REMOVAL_DTD = 5  # seconds; the seed asks for "a smaller DTD value" than the group's


class RemovalMethod(StrEnum):
    DELETE = "delete"
    DTD = "dtd"


def removed_reason(method: RemovalMethod) -> str:
    return f"removed by the administrator (method {method})"


def removal_refusal(store: KeyStore, group_id: int, address: str) -> Refusal | None:
    """The refusal for a removed member's GROUPKEY-PULL (message 1), None for anyone else."""
    member = store.member(group_id, address)
    if member is None or member.state is not MemberState.REMOVED:
        return None
    return Refusal(
        NotifyType.AUTHENTICATION_FAILED,
        f"member {address} was removed from group {group_id} by the administrator",
    )


def delete_payloads(keys: KeySet) -> tuple[Delete, ...]:
    """Delete payloads for the TEKs, then the KEK, of ``keys`` (RFC 6407 §5.9)."""
    deletes = []
    if keys.teks:
        spis = tuple(t.spi.to_bytes(TEK_SPI_SIZE, "big") for t in keys.teks)
        deletes.append(Delete(DOI.GDOI, GdoiProtocol.IPSEC_ESP, TEK_SPI_SIZE, spis))
    if keys.kek is not None:
        deletes.append(Delete(DOI.GDOI, GdoiProtocol.KEK, KEK_SPI_SIZE, (keys.kek.spi,)))
    return tuple(deletes)


def old_sas_with_dtd(keys: GroupKeys, current: KeySet, dtd: int, now: float) -> GroupPolicy:
    """The current SA TEKs and their keys, no SA KEK, and the group's GAP with DTD ``dtd``."""
    if not current.teks:
        raise ValueError(f"group {keys.group_id} has no SA to deactivate; remove the member with method delete")
    policy = keys.policy(KeySet(None, current.teks), now)
    gap = replace(policy.gap or GroupAssociatedPolicy(), deactivation_delay=dtd)
    return replace(policy, sa=replace(policy.sa, gap=gap))
