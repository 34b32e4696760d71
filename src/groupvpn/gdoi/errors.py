"""The one exception of the group policy layer."""

from __future__ import annotations

from ..wire.numbers import NotifyType


class PolicyError(ValueError):
    """A group policy that must not be installed (member) or offered (key server).

    ``reason`` is the operator-facing sentence, ``notify_type`` the ISAKMP
    notify a member sends the key server when it refuses the policy for
    this reason (RFC 6407 §3.3).
    """

    def __init__(self, reason: str, notify_type: NotifyType = NotifyType.BAD_PROPOSAL_SYNTAX) -> None:
        self.reason = reason
        self.notify_type = notify_type
        super().__init__(reason)


def unsupported(reason: str) -> PolicyError:
    """An algorithm, attribute or value this implementation does not offer."""
    return PolicyError(reason, NotifyType.ATTRIBUTES_NOT_SUPPORTED)


def bad_key(reason: str) -> PolicyError:
    """Key material missing, unmatched, or of the wrong size for its algorithm."""
    return PolicyError(reason, NotifyType.INVALID_KEY_INFORMATION)


def bad_selector(reason: str) -> PolicyError:
    """A traffic selector or rekey identity that names no usable addresses."""
    return PolicyError(reason, NotifyType.INVALID_ID_INFORMATION)
