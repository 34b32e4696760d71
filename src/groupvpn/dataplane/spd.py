"""Outbound policy: which packets are encrypted, which pass in clear, which are dropped.

Evaluation order for a flow (RFC 4301 §4.4.1 ordered SPD, plus the seed's
Group VPN rules):

1. bypass entries (the key servers' control traffic, then the service
   filter's terms), in order: the first one matching decides, ``skip``
   passes the flow in clear, never part of the VPN, ``service`` hands it
   to the steps below (a service filter ends in an implicit skip of its
   address family, ``ServiceFilter.bypass``); none matching hands it on too;
2. while the fail-open flag is up (the group's SAs are down because no key
   server answers), fail-open entries (at most 10, source and destination
   only) pass in clear;
3. the group's rules, first match wins: permit encrypts with the rule's
   current SA (or drops while it has none), deny passes in clear;
4. nothing matched: drop (fail closed).

Decisions are cached per flow (addresses, protocol, ports).  Every change
of rules, SAs or the fail-open flag clears the cache, so a swapped SA is
used from the next packet on.  Multicast destinations need nothing
special: they match selectors like any address and keep the group SA.

Non-initial fragments carry no ports; like RFC 4301 §7.1's default they
only match selectors without port ranges.  ICMP type/code are not
selectable.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import TYPE_CHECKING

from ..wire.numbers import IPV6_HOP_BY_HOP, IpProtocol, PolicyAction
from . import DropReason

if TYPE_CHECKING:
    from .esp_path import EspSa

Prefix = IPv4Network | IPv6Network
# A flow: source and destination address octets, protocol, ports (-1 when the packet has none).
Flow = tuple[bytes, bytes, int, int, int]

MAX_FAIL_OPEN_RULES = 10  # per VPN (seed, "Partial Fail-Open")
MAX_FILTER_TERMS = 32  # per service filter: the steering gives each term a rule preference of its own
ANY_PORT = (0, 0xFFFF)
PORT_PROTOCOLS = frozenset({IpProtocol.TCP, IpProtocol.UDP, IpProtocol.DCCP, IpProtocol.SCTP, IpProtocol.UDP_LITE})
_V6_OPTION_HEADERS = frozenset({IPV6_HOP_BY_HOP, IpProtocol.IPV6_ROUTING, IpProtocol.IPV6_DESTINATION_OPTIONS})
_MAX_V6_HEADERS = 8  # extension headers walked before giving up on ports
_PORTS = struct.Struct("!HH")
_PORT_NUMBERS = frozenset(int(protocol) for protocol in PORT_PROTOCOLS)


class SpdError(ValueError):
    """A policy that cannot be installed (e.g. an 11th fail-open rule)."""


def flow_of(packet: bytes) -> Flow | None:
    """The flow a packet belongs to, or None when its IP header is unusable."""
    size = len(packet)
    if size < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        hlen = (packet[0] & 0x0F) << 2
        if hlen < 20 or size < hlen:
            return None
        proto = packet[9]
        if proto in PORT_PROTOCOLS and not (packet[6] & 0x1F or packet[7]) and size >= hlen + 4:
            sport, dport = _PORTS.unpack_from(packet, hlen)
            return packet[12:16], packet[16:20], proto, sport, dport
        return packet[12:16], packet[16:20], proto, -1, -1
    if version != 6 or size < 40:
        return None
    proto, pos, initial = packet[6], 40, True
    for _ in range(_MAX_V6_HEADERS):
        if proto in _V6_OPTION_HEADERS:
            if size < pos + 2:
                return None
            proto, pos = packet[pos], pos + (packet[pos + 1] + 1) * 8
        elif proto == IpProtocol.IPV6_FRAGMENT:
            if size < pos + 8:
                return None
            initial = not (packet[pos + 2] << 8 | packet[pos + 3]) & 0xFFF8
            proto, pos = packet[pos], pos + 8
        else:
            break
    if initial and proto in PORT_PROTOCOLS and size >= pos + 4:
        sport, dport = _PORTS.unpack_from(packet, pos)
        return packet[8:24], packet[24:40], proto, sport, dport
    return packet[8:24], packet[24:40], proto, -1, -1


@dataclass(frozen=True, slots=True)
class Selector:
    """Traffic selector: address prefixes (None = any, either family), protocol (None = any), port ranges."""

    source: Prefix | None = None
    destination: Prefix | None = None
    protocol: int | None = None
    source_ports: tuple[int, int] = ANY_PORT
    destination_ports: tuple[int, int] = ANY_PORT
    _match: tuple[tuple[int, int, int] | None, tuple[int, int, int] | None] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.source is not None and self.destination is not None and self.source.version != self.destination.version:
            raise SpdError(f"selector mixes address families: {self.source} -> {self.destination}")
        for low, high in (self.source_ports, self.destination_ports):
            if not 0 <= low <= high <= 0xFFFF:
                raise SpdError(f"port range {low}-{high} is not within 0-65535")
        if self.protocol is not None and not 0 <= self.protocol <= 0xFF:
            raise SpdError(f"protocol {self.protocol} does not fit 8 bits")
        object.__setattr__(self, "_match", (_prefix_test(self.source), _prefix_test(self.destination)))

    def matches(self, flow: Flow) -> bool:
        src, dst, proto, sport, dport = flow
        source, destination = self._match
        if source is not None and not _in_prefix(source, src):
            return False
        if destination is not None and not _in_prefix(destination, dst):
            return False
        if self.protocol is not None and proto != self.protocol:
            return False
        return _in_range(self.source_ports, sport) and _in_range(self.destination_ports, dport)


class SelectorCache:
    """Whether a packet matches any of some selectors, remembered per flow.

    Decryption checks every inner packet against its SA's selectors (RFC
    4301 §5.2 step 4); the answer only depends on the flow, so it is
    computed once per flow.  When no selector names a protocol or ports the
    flow is just the address octets, read without parsing further.
    """

    __slots__ = ("selectors", "_seen", "_limit", "_addresses_only")

    def __init__(self, selectors: Iterable[Selector], limit: int = 1 << 16) -> None:
        self.selectors = tuple(selectors)
        self._seen: dict[object, bool] = {}
        self._limit = limit
        self._addresses_only = all(
            s.protocol is None and s.source_ports == ANY_PORT and s.destination_ports == ANY_PORT
            for s in self.selectors
        )

    @property
    def cached_flows(self) -> int:
        return len(self._seen)

    def admits(self, packet: bytes) -> bool:
        key: object
        first = packet[0] if packet else 0
        if self._addresses_only and 0x45 <= first < 0x50 and len(packet) >= (first & 0x0F) << 2:
            key = packet[12:20]
        elif self._addresses_only and first >> 4 == 6 and len(packet) >= 40:
            key = packet[8:40]
        else:
            key = flow_of(packet)
            if key is None:
                return False
        seen = self._seen.get(key)
        if seen is None:
            flow = flow_of(packet)
            seen = flow is not None and any(selector.matches(flow) for selector in self.selectors)
            if len(self._seen) >= self._limit:
                self._seen.clear()
            self._seen[key] = seen
        return seen


def _prefix_test(prefix: Prefix | None) -> tuple[int, int, int] | None:
    if prefix is None:
        return None
    return (4 if prefix.version == 4 else 16), int(prefix.netmask), int(prefix.network_address)


def _in_prefix(test: tuple[int, int, int], address: bytes) -> bool:
    size, mask, network = test
    return len(address) == size and int.from_bytes(address, "big") & mask == network


def _in_range(ports: tuple[int, int], port: int) -> bool:
    if ports == ANY_PORT:
        return True
    return ports[0] <= port <= ports[1]


@dataclass(frozen=True, slots=True)
class FilterTerm:
    """An ordered bypass entry: flows matching any of ``selectors`` skip the VPN (``skip``) or go on to its policy."""

    selectors: tuple[Selector, ...]
    skip: bool = True


_EVERY = {4: ip_network("0.0.0.0/0"), 6: ip_network("::/0")}


@dataclass(frozen=True, slots=True)
class ServiceFilter:
    """A Junos service filter for one address family, in data-plane terms.

    Terms in order, the first matching decides; a flow of ``family``
    matching none skips the VPN (Junos's implicit final ``skip``).
    Selectors without addresses match any address of ``family``.
    """

    family: int
    terms: tuple[FilterTerm, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in _EVERY:
            raise SpdError(f"address family {self.family}: choose from 4 and 6")
        for term in self.terms:
            for selector in term.selectors:
                for prefix in (selector.source, selector.destination):
                    if prefix is not None and prefix.version != self.family:
                        raise SpdError(f"{prefix} is not an IPv{self.family} prefix")
        if len(self.terms) > MAX_FILTER_TERMS:
            raise SpdError(f"{len(self.terms)} terms; a service filter has at most {MAX_FILTER_TERMS}")

    def bypass(self) -> tuple[FilterTerm, ...]:
        """The SPD's bypass entries: the terms confined to the family, then the implicit skip of the family."""
        every = _EVERY[self.family]

        def confined(selector: Selector) -> Selector:
            if selector.source is None and selector.destination is None:
                return replace(selector, source=every)
            return selector

        terms = tuple(FilterTerm(tuple(map(confined, term.selectors)), term.skip) for term in self.terms)
        return (*terms, FilterTerm((Selector(every),)))

    def esp_only(self) -> ServiceFilter:
        """What of the filter an ESP packet can match: each selector naming ESP, terms left with none dropped."""
        terms = []
        for term in self.terms:
            selectors = tuple(
                replace(selector, protocol=IpProtocol.ESP)
                for selector in term.selectors
                if selector.protocol in (None, IpProtocol.ESP)
                and selector.source_ports == selector.destination_ports == ANY_PORT
            )
            if selectors:
                terms.append(FilterTerm(selectors, term.skip))
        return ServiceFilter(self.family, tuple(terms))


@dataclass(frozen=True, slots=True)
class Rule:
    """One group policy entry, as the key server distributes it (a TEK or a deny entry)."""

    name: str
    selector: Selector
    action: PolicyAction = PolicyAction.PERMIT


@dataclass(frozen=True, slots=True)
class FailOpenRule:
    """A (source, destination) pair allowed in clear while the group's SAs are down."""

    source: Prefix
    destination: Prefix

    def selector(self) -> Selector:
        return Selector(self.source, self.destination)


class Action(IntEnum):
    PROTECT = 1
    BYPASS = 2
    DISCARD = 3


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a flow; built when policy changes, shared by every packet of the flow."""

    action: Action
    sa: EspSa | None = None
    reason: DropReason | None = None


BYPASS = Verdict(Action.BYPASS)
NO_POLICY = Verdict(Action.DISCARD, reason=DropReason.NO_POLICY)
NO_SA = Verdict(Action.DISCARD, reason=DropReason.NO_SA)
MALFORMED = Verdict(Action.DISCARD, reason=DropReason.MALFORMED)


class Spd:
    """The policy of one VPN (group) with its flow cache; see the module docstring for the order."""

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        *,
        bypass: Iterable[FilterTerm] = (),
        fail_open: Iterable[FailOpenRule] = (),
        cache_limit: int = 1 << 16,
    ) -> None:
        self._cache: dict[object, Verdict] = {}  # by flow, or for IPv4 by its raw octets (``lookup``)
        self._cache_limit = cache_limit
        self._bypass = tuple((selector, term.skip) for term in bypass for selector in term.selectors)
        self._fail_open_rules = _checked_fail_open(fail_open)
        self._fail_open = False
        self._rules: tuple[Rule, ...] = ()
        self._sas: dict[str, EspSa] = {}
        self._decisions: tuple[tuple[Selector, Verdict], ...] = ()
        self.replace_rules(rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def cached_flows(self) -> int:
        return len(self._cache)

    @property
    def fail_open(self) -> bool:
        return self._fail_open

    @fail_open.setter
    def fail_open(self, active: bool) -> None:
        """Raised by the member while its group SAs are down for want of a key server."""
        self._fail_open = active
        self._cache.clear()

    def replace_rules(self, rules: Iterable[Rule]) -> None:
        """Install a new rule list; permit rules keep their SA by name, other SAs are forgotten."""
        rules = tuple(rules)
        names = [rule.name for rule in rules]
        if len(set(names)) != len(names):
            raise SpdError(f"rule names must be unique: {names}")
        permits = {rule.name for rule in rules if rule.action == PolicyAction.PERMIT}
        self._rules = rules
        self._sas = {name: sa for name, sa in self._sas.items() if name in permits}
        self._rebuild()

    def set_sa(self, rule: str, sa: EspSa | None) -> None:
        """Make ``sa`` the one SA a permit rule encrypts with (None: it has none); takes effect at once."""
        rule_obj = next((r for r in self._rules if r.name == rule), None)
        if rule_obj is None:
            raise SpdError(f"no rule named {rule!r}")
        if rule_obj.action != PolicyAction.PERMIT:
            raise SpdError(f"rule {rule!r} is a deny rule and encrypts nothing")
        if sa is None:
            self._sas.pop(rule, None)
        else:
            self._sas[rule] = sa
        self._rebuild()

    def sa_of(self, rule: str) -> EspSa | None:
        return self._sas.get(rule)

    def _rebuild(self) -> None:
        self._decisions = tuple((rule.selector, self._verdict(rule)) for rule in self._rules)
        self._cache.clear()

    def _verdict(self, rule: Rule) -> Verdict:
        if rule.action == PolicyAction.DENY:
            return BYPASS
        sa = self._sas.get(rule.name)
        return NO_SA if sa is None else Verdict(Action.PROTECT, sa)

    def lookup(self, packet: bytes) -> Verdict:
        key: object
        if packet[:1] == b"\x45" and len(packet) >= 20:  # IPv4 without options: the flow's octets as they lie
            proto = packet[9]
            ported = proto in _PORT_NUMBERS and len(packet) >= 24 and not (packet[6] & 0x1F or packet[7])
            key = (proto, packet[12:24] if ported else packet[12:20])
        else:
            key = flow_of(packet)
            if key is None:
                return MALFORMED
        verdict = self._cache.get(key)
        if verdict is None:
            flow = flow_of(packet)
            assert flow is not None
            verdict = self.decide(flow)
            if len(self._cache) >= self._cache_limit:
                self._cache.clear()
            self._cache[key] = verdict
        return verdict

    def decide(self, flow: Flow) -> Verdict:
        """The uncached decision for a flow."""
        for selector, skip in self._bypass:
            if selector.matches(flow):
                if skip:
                    return BYPASS
                break
        if self._fail_open and any(selector.matches(flow) for selector in self._fail_open_rules):
            return BYPASS
        for selector, verdict in self._decisions:
            if selector.matches(flow):
                return verdict
        return NO_POLICY


def _checked_fail_open(rules: Iterable[FailOpenRule]) -> tuple[Selector, ...]:
    rules = tuple(rules)
    if len(rules) > MAX_FAIL_OPEN_RULES:
        raise SpdError(f"{len(rules)} fail-open rules; a VPN allows at most {MAX_FAIL_OPEN_RULES}")
    return tuple(rule.selector() for rule in rules)
