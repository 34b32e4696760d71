"""Retransmission with exponential backoff for the one message awaiting a reply.

IKEv1 runs over UDP and leaves loss recovery to the sender of each
request (RFC 2408 §5; RFC 2409 §5): the initiator resends its last Main
Mode message, a DPD prober its R-U-THERE.  Responders never time out on
their own; they resend a stored reply when a duplicate request arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sa import Address


@dataclass(frozen=True, slots=True)
class RetransmitPolicy:
    """``attempts`` transmissions in all; the wait after send k is ``initial * factor**(k-1)``, capped."""

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 8.0
    attempts: int = 5

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.maximum < self.initial or self.attempts < 1:
            raise ValueError(f"unusable retransmission policy {self}")

    def wait_after(self, sent: int) -> float:
        return min(self.initial * self.factor ** (sent - 1), self.maximum)


@dataclass
class Retransmission:
    """One outstanding datagram: sent ``sent`` times, next action at ``deadline``."""

    datagram: bytes
    addr: Address
    policy: RetransmitPolicy
    deadline: float
    sent: int = 1

    @classmethod
    def start(cls, datagram: bytes, addr: Address, policy: RetransmitPolicy, now: float) -> Retransmission:
        return cls(datagram, addr, policy, now + policy.wait_after(1))

    @property
    def exhausted(self) -> bool:
        """All attempts were sent and the wait after the last one is over (check after ``due``)."""
        return self.sent >= self.policy.attempts

    def due(self, now: float) -> bool:
        return now >= self.deadline

    def resend(self, now: float) -> bytes:
        """Count one more transmission and return the octets to send."""
        self.sent += 1
        self.deadline = now + self.policy.wait_after(self.sent)
        return self.datagram
