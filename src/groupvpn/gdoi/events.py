"""What the GROUPKEY-PULL cores hand back: datagrams for the IKE SA's peer and typed events.

Every ``receive``/``handle_timer`` call returns one ``PullOutput``; the
driver sends ``datagrams`` to the peer of the IKE SA the exchange runs
under and acts on ``events``.  Events carry no key material in their
repr (the policy's key objects hide it), so they can be logged whole.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..ike.sa import Address
from ..wire.isakmp import Identification
from .policy import GroupPolicy, SenderIds


@dataclass(frozen=True, slots=True)
class Peer:
    """A group member as the key server sees it: address and Phase 1 identity."""

    address: Address
    identity: Identification


class FailureKind(enum.Enum):
    """Why a member's registration failed; decides what the member daemon does next."""

    NO_RESPONSE = "no response"  # try the next key server
    REFUSED = "refused by the key server"  # the key server sent an error notify
    POLICY_REJECTED = "policy rejected"  # we told the key server why (notify sent)
    MALFORMED = "malformed message"  # authentic but undecodable; notify sent


@dataclass(frozen=True, slots=True)
class RegistrationComplete:
    """The member may install ``policy``.

    ``seq`` is the lowest GROUPKEY-PUSH sequence number still to be
    refused under the KEK (accept only greater ones, RFC 6407 §3.2), None
    without a KEK; ``stale_seq`` says message 4's SEQ was older than a
    PUSH already seen and was ignored (RFC 6407 §3.3).
    """

    policy: GroupPolicy
    seq: int | None
    stale_seq: bool = False


@dataclass(frozen=True, slots=True)
class RegistrationFailed:
    """The registration is over without a policy; ``reason`` is the operator-facing sentence.

    RFC 6407 §3.3 suggests the member then tears down the IKE SA.
    """

    kind: FailureKind
    reason: str


@dataclass(frozen=True, slots=True)
class MemberRegistered:
    """Key server: message 3 validated and message 4 went out; only now does group state change."""

    peer: Peer
    group_id: int
    message_id: int
    seq: int | None
    sender_ids: SenderIds | None


@dataclass(frozen=True, slots=True)
class RegistrationRefused:
    """Key server: a notify told the member why it was refused; ``group_id`` is None if unreadable."""

    peer: Peer
    group_id: int | None
    notify_type: int
    reason: str


PullEvent = RegistrationComplete | RegistrationFailed | MemberRegistered | RegistrationRefused


@dataclass(frozen=True, slots=True)
class PullOutput:
    datagrams: tuple[bytes, ...] = ()
    events: tuple[PullEvent, ...] = ()
