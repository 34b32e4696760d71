"""GDOI (RFC 6407) above the wire codec: the group policy model.

policy   what a key server distributes for a group (KEK, GAP, TEKs, keys, SIDs), to and from the wire
errors   PolicyError, with the notify a member sends when it refuses a policy
"""

from .errors import PolicyError
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

__all__ = [
    "AckRequest",
    "Endpoint",
    "GroupAssociatedPolicy",
    "GroupPolicy",
    "KekKeys",
    "KekPolicy",
    "PolicyError",
    "SaPolicy",
    "SenderIds",
    "TekKeys",
    "TekPolicy",
    "TrafficSelector",
]
