"""GDOI (RFC 6407) above the wire codec: the group policy model and the GROUPKEY-PULL exchange, sans-IO.

policy   what a key server distributes for a group (KEK, GAP, TEKs, keys, SIDs), to and from the wire
pull     GROUPKEY-PULL member (PullInitiator) and key server (PullResponder) sides
events   what the PULL cores return: datagrams and typed events
errors   PolicyError, with the notify a member sends when it refuses a policy
"""

from .errors import PolicyError
from .events import (
    FailureKind,
    MemberRegistered,
    Peer,
    PullEvent,
    PullOutput,
    RegistrationComplete,
    RegistrationFailed,
    RegistrationRefused,
)
from .policy import (
    AckRequest,
    Endpoint,
    GroupAssociatedPolicy,
    GroupPolicy,
    KekKeys,
    KekPolicy,
    SaPolicy,
    SenderIds,
    TekKeys,
    TekPolicy,
    TrafficSelector,
)
from .pull import GroupDirectory, LastPush, Offer, PullInitiator, PullResponder, PullState, Refusal

__all__ = [
    "AckRequest",
    "Endpoint",
    "FailureKind",
    "GroupAssociatedPolicy",
    "GroupDirectory",
    "GroupPolicy",
    "KekKeys",
    "KekPolicy",
    "LastPush",
    "MemberRegistered",
    "Offer",
    "Peer",
    "PolicyError",
    "PullEvent",
    "PullInitiator",
    "PullOutput",
    "PullResponder",
    "PullState",
    "Refusal",
    "RegistrationComplete",
    "RegistrationFailed",
    "RegistrationRefused",
    "SaPolicy",
    "SenderIds",
    "TekKeys",
    "TekPolicy",
    "TrafficSelector",
]
