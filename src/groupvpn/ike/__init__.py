"""IKEv1 Phase 1 (Main Mode, pre-shared keys) as sans-IO state machines, and the IKE SA it yields."""

from .events import (
    Datagram,
    DeleteReason,
    Event,
    FailureReason,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    NotifyReceived,
    Output,
    PeerAlive,
)
from .initiator import InitiatorState, Phase1Initiator
from .proposals import ProposalError, Suite
from .psk import Identity, PreSharedKey, PskError, PskStore
from .responder import Limits, Phase1Responder
from .retransmit import RetransmitPolicy
from .sa import Address, CbcChain, IkeSa, Role

__all__ = [
    "Address",
    "CbcChain",
    "Datagram",
    "DeleteReason",
    "Event",
    "FailureReason",
    "IkeSa",
    "IkeSaDeleted",
    "IkeSaEstablished",
    "IkeSaFailed",
    "Identity",
    "InitiatorState",
    "Limits",
    "NotifyReceived",
    "Output",
    "PeerAlive",
    "Phase1Initiator",
    "Phase1Responder",
    "PreSharedKey",
    "ProposalError",
    "PskError",
    "PskStore",
    "RetransmitPolicy",
    "Role",
    "Suite",
]
