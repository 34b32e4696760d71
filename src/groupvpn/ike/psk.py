"""Pre-shared keys and how a peer's key is found.

Main Mode with pre-shared keys authenticates with a key chosen before the
peer's identity is visible (IDii travels encrypted under that key, RFC 2409
§5.4), so the primary lookup is by peer address.  Keys bound to an identity
are usable too: the responder tries them in turn on message 5 and keeps
the one whose HASH_I verifies for a matching IDii (``candidates``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..wire.numbers import IdType

MIN_PSK_LENGTH = 20  # the seed's minimum, in characters


class PskError(ValueError):
    """A pre-shared key configuration that must not be used."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An ISAKMP identity as the ID payload carries it: type and data (RFC 2407 §4.6.2)."""

    id_type: int
    data: bytes

    @classmethod
    def address(cls, address: str) -> Identity:
        """ID_IPV4_ADDR / ID_IPV6_ADDR for an address literal."""
        ip = ipaddress.ip_address(address)
        return cls(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR, ip.packed)

    @classmethod
    def fqdn(cls, name: str) -> Identity:
        return cls(IdType.FQDN, name.encode("ascii"))


@dataclass(frozen=True, slots=True)
class PreSharedKey:
    """Key octets; the repr never shows them."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_PSK_LENGTH:
            raise PskError(
                f"pre-shared key has {len(self.secret)} characters; at least {MIN_PSK_LENGTH} are required"
            )

    @classmethod
    def from_text(cls, text: str) -> PreSharedKey:
        """A key as written in a file: one line, surrounding whitespace ignored."""
        stripped = text.strip()
        if "\n" in stripped:
            raise PskError("a pre-shared key file must hold exactly one line")
        return cls(stripped.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A key to try for a peer; ``identity`` set means IDii must equal it for the key to count."""

    key: PreSharedKey
    identity: Identity | None = None


@dataclass(frozen=True)
class PskStore:
    """Keys by peer address, by peer identity, and one optional default."""

    by_address: Mapping[str, PreSharedKey] = field(default_factory=dict)
    by_identity: Mapping[Identity, PreSharedKey] = field(default_factory=dict)
    default: PreSharedKey | None = None

    def __post_init__(self) -> None:
        normalised = {}
        for address, key in self.by_address.items():
            try:
                normalised[str(ipaddress.ip_address(address))] = key
            except ValueError:
                raise PskError(f"pre-shared key configured for {address!r}, which is not an IP address") from None
        object.__setattr__(self, "by_address", normalised)

    @classmethod
    def single(cls, key: PreSharedKey) -> PskStore:
        """One key for every peer."""
        return cls(default=key)

    def for_initiator(self, peer: str, peer_identity: Identity | None = None) -> PreSharedKey | None:
        """The key an initiator uses towards ``peer``: identity, then address, then default."""
        if peer_identity is not None and peer_identity in self.by_identity:
            return self.by_identity[peer_identity]
        return self.by_address.get(str(ipaddress.ip_address(peer)), self.default)

    def candidates(self, peer: str) -> tuple[Candidate, ...]:
        """Keys a responder may try for ``peer``: its address key alone if it has one,
        else every identity-bound key followed by the default."""
        key = self.by_address.get(str(ipaddress.ip_address(peer)))
        if key is not None:
            return (Candidate(key),)
        out = [Candidate(k, identity) for identity, k in self.by_identity.items()]
        if self.default is not None:
            out.append(Candidate(self.default))
        return tuple(out)
