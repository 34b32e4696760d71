"""The typed configuration of a key server or a member, with every semantic problem at its position.

``load`` parses a Junos-style text (either syntax, see ``junos``), drops
inactive statements and builds a ``KeyServerConfig`` or a ``MemberConfig``:
numbers in range, addresses and prefixes parsed, algorithm names mapped to
registry numbers and to Phase 1 / ESP suites, and every reference between
statements resolved into the object it names.  Like parsing, building
collects every problem before raising one ``ConfigError``, each at the
line and column of the value or statement at fault.  Pre-shared keys
never appear in a message.

Defaults and ranges (Junos's where Junos states one; seconds unless said):

* IKE proposal: ``encryption-algorithm``, ``authentication-algorithm`` and
  ``dh-group`` required; ``lifetime-seconds`` 180..86400, default 3600.
* IKE policy: ``proposals`` and a ``pre-shared-key`` of at least 20
  characters (``hexadecimal``: 20 octets) required; Junos ``$9$``
  obfuscated keys are refused rather than used as literal text.
* member gateway: ``ike-policy``, 1 to 4 ``server-address`` (tried in
  order) and ``local-address`` of the same IP version required;
  ``server-port`` default 848.
* member VPN (at least one): ``ike-gateway`` and ``group`` (1..2^32-1, one
  VPN per group) required; ``match-direction`` default output; ``df-bit``
  default clear; at most 10 fail-open rules, each with both addresses.
* service set: exactly one ``ipsec-group-vpn``, and a VPN in at most one
  service set; interfaces are Linux interface names, units 0..16384,
  service sets apply under ``family inet`` or ``inet6`` (both: once), whose
  addresses are IPv4 or IPv6 address/length.  A ``service-filter`` named
  where a service set is applied is one of that family's; a service set
  applies one filter (or none) per direction and family, since the
  steering selects by input interface and cannot tell the interfaces of
  one direction apart (``gm/dataplane_bridge``).
* service filter: at most 32 terms (each takes one rule preference),
  each ``service`` (the default) or ``skip``; prefixes of the filter's
  family, no ``except``; ``protocol`` (inet) or ``next-header`` (inet6)
  names or 1..255; ports 1..65534 or ``low-high`` or a name, and only with
  protocols that have ports (ip rules would read ESP's SPI as ports);
  a term matches at most 64 combinations of its lists (one ip rule each).
* key server: its one address is ``listen-address`` or else the groups'
  ``server-address``; every ``server-address`` and gateway ``local-address``
  must equal it.  ``port`` default 848; ``state-file`` (an absolute path)
  default /var/lib/groupvpn/ks.db.
* server gateway: ``ike-policy`` and either ``address`` (members' addresses)
  or ``any-address`` (the group-wide key) required.  An address has one key
  and there is one group-wide key, since Main Mode picks the key by address.
* IPsec proposal: ``encryption-algorithm`` required;
  ``authentication-algorithm`` required for CBC ciphers and refused for GCM
  (which has its own integrity); ``lifetime-seconds`` 10..2592000 (the
  policy model's bounds), default 3600.
* group (at least one): ``group-id`` (unique), ``ike-gateway`` and at least one
  ``ipsec-sa`` required; ``rekey-percentage`` 1..50, default 10;
  activation/deactivation delays 0..65535, absent by default;
  ``anti-replay-time-window`` 1..65535 or ``no-anti-replay`` (window 0),
  absent by default (the window travels in a private GAP attribute other
  implementations must reject, so it is only sent when asked for).
* KEK (``server-member-communication``): unicast, AES-128-CBC, 3600, SHA-256
  signatures, RFC 8263 acks requested; ``retransmission-period`` 1..600,
  default 10; ``number-of-retransmission`` 0..10, default 2 (for multicast,
  the number of repeats); ``multicast-group`` (a multicast address) required
  with multicast and refused without, ``multicast-port`` default 848;
  ``signing-key`` an absolute path.
* ipsec-sa: ``proposal`` required; one ``permit`` match-policy, or two that
  are mirror images (A-B and B-A), since the TEK they share pairs them
  that way (RFC 6407 §5.5); any number of ``deny`` ones.
* match-policy: ``source`` and ``destination`` prefixes of one IP version
  required; ``protocol`` (name or number) default 0 (any); ports default 0
  (any) and need a protocol; ``action`` default permit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TypeVar

from ..crypto.suites import EspSuite, esp_suite
from ..dataplane.spd import MAX_FILTER_TERMS, PORT_PROTOCOLS
from ..gdoi.policy import (
    MAX_LIFETIME,
    MIN_LIFETIME,
    AckRequest,
    Endpoint,
    GroupAssociatedPolicy,
    TrafficSelector,
)
from ..ike.proposals import Suite
from ..ike.psk import MIN_PSK_LENGTH, PreSharedKey
from ..wire.numbers import GDOI_PORT, KekAckType, KekAlgorithm, PolicyAction, SigHashAlgorithm
from .errors import ConfigError, Problem
from .junos import Node, Statement, parse
from .schema import EITHER, MEMBER, SERVER
from .values import (
    ACTIONS,
    DH_GROUPS,
    ESP_CIPHERS,
    ESP_INTEGRITY,
    IKE_CIPHERS,
    IKE_HASHES,
    KEK_CIPHERS,
    MAX_UINT32,
    PROTOCOLS,
    SIG_HASHES,
    AckMode,
    Address,
    CommunicationType,
    DfBit,
    Direction,
    FilterAction,
    InterfaceAddress,
    Prefix,
    absolute_path,
    address,
    filter_protocol,
    inet6_address,
    inet_address,
    instance_name,
    integer,
    interface_name,
    port,
    port_range,
    prefix,
    protocol,
    service_port,
)

DEFAULT_IKE_LIFETIME = 3600
DEFAULT_SA_LIFETIME = 3600
DEFAULT_STATE_FILE = Path("/var/lib/groupvpn/ks.db")
DEFAULT_REKEY_PERCENTAGE = 10
MAX_SERVERS = 4
MAX_FAIL_OPEN_RULES = 10
MAX_UNIT = 16384
MAX_TERM_SELECTORS = 64
FAMILIES = {"inet": 4, "inet6": 6}  # firewall and interface families, by IP version
_JUNOS_OBFUSCATED = "$9$"
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")

RFC8263_ACK = AckRequest(KekAckType.KEK_SHA256)
LEGACY_ACK = AckRequest(KekAckType.KEK_SHA256, legacy=True)
NO_GAP = GroupAssociatedPolicy()

T = TypeVar("T")


class Role(Enum):
    """Which daemon a configuration is for."""

    SERVER = "server"
    MEMBER = "member"


# -- Phase 1 ----------------------------------------------------------------------


@dataclass(frozen=True)
class IkeProposal:
    name: str
    suite: Suite


@dataclass(frozen=True)
class IkePolicy:
    """Phase 1 proposals in order of preference, and the pre-shared key (never in a repr)."""

    name: str
    proposals: tuple[IkeProposal, ...]
    psk: PreSharedKey

    @property
    def suites(self) -> tuple[Suite, ...]:
        return tuple(proposal.suite for proposal in self.proposals)


# -- member -------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberGateway:
    """The key servers of a VPN, tried in order, and where the member talks to them from."""

    name: str
    policy: IkePolicy
    servers: tuple[Address, ...]
    local_address: Address
    server_port: int = GDOI_PORT
    routing_instance: str | None = None


@dataclass(frozen=True)
class FailOpenRule:
    """Traffic that passes in clear while the VPN has no keys (partial fail-open)."""

    name: str
    source: Prefix
    destination: Prefix


@dataclass(frozen=True)
class InterfaceUnit:
    """A logical interface: ``unit`` of the Linux interface ``interface``, with its addresses (both families)."""

    interface: str
    unit: int
    addresses: tuple[InterfaceAddress, ...] = ()


PortRange = tuple[int, int]


@dataclass(frozen=True)
class FilterTerm:
    """One term of a service filter: a packet matching every non-empty list (any entry of each) gets ``action``."""

    name: str
    sources: tuple[Prefix, ...] = ()
    destinations: tuple[Prefix, ...] = ()
    protocols: tuple[int, ...] = ()
    source_ports: tuple[PortRange, ...] = ()
    destination_ports: tuple[PortRange, ...] = ()
    action: FilterAction = FilterAction.SERVICE


@dataclass(frozen=True)
class ServiceFilter:
    """``firewall family inet|inet6 service-filter``: terms in order, the first match decides, no match skips."""

    name: str
    family: int  # IP version: 4 (family inet) or 6 (inet6)
    terms: tuple[FilterTerm, ...] = ()


@dataclass(frozen=True)
class ServiceAttachment:
    """A service set applied to the traffic entering or leaving an interface unit, through a service filter or not."""

    unit: InterfaceUnit
    direction: Direction
    service_filter: ServiceFilter | None = None


@dataclass(frozen=True)
class ServiceSet:
    """The group VPN a service set applies, and where it is applied."""

    name: str
    vpn: str
    attachments: tuple[ServiceAttachment, ...] = ()
    service_interface: str | None = None


@dataclass(frozen=True)
class MemberVpn:
    """One group the member registers to, and how its traffic is treated."""

    name: str
    group_id: int
    gateway: MemberGateway
    match_direction: Direction = Direction.OUTPUT
    df_bit: DfBit = DfBit.CLEAR
    fail_open: tuple[FailOpenRule, ...] = ()
    service_set: ServiceSet | None = None


@dataclass(frozen=True)
class MemberConfig:
    vpns: tuple[MemberVpn, ...]
    service_sets: tuple[ServiceSet, ...] = ()
    interfaces: tuple[InterfaceUnit, ...] = ()
    service_filters: tuple[ServiceFilter, ...] = ()

    def vpn(self, name: str) -> MemberVpn:
        return next(vpn for vpn in self.vpns if vpn.name == name)


# -- key server ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServerGateway:
    """Members that may register through one gateway: the listed addresses, or (none listed) any."""

    name: str
    policy: IkePolicy
    addresses: tuple[Address, ...] = ()

    @property
    def any_address(self) -> bool:
        """The policy's key is the group-wide key."""
        return not self.addresses


@dataclass(frozen=True)
class IpsecProposal:
    name: str
    suite: EspSuite
    lifetime: int = DEFAULT_SA_LIFETIME


@dataclass(frozen=True)
class MatchPolicy:
    name: str
    selector: TrafficSelector
    action: PolicyAction = PolicyAction.PERMIT


@dataclass(frozen=True)
class IpsecSa:
    """One TEK of a group: its proposal and the traffic it covers (or leaves in clear)."""

    name: str
    proposal: IpsecProposal
    match_policies: tuple[MatchPolicy, ...]

    @property
    def selectors(self) -> tuple[TrafficSelector, ...]:
        """What the TEK protects: its permit policies."""
        return tuple(m.selector for m in self.match_policies if m.action is PolicyAction.PERMIT)

    @property
    def deny(self) -> tuple[TrafficSelector, ...]:
        return tuple(m.selector for m in self.match_policies if m.action is PolicyAction.DENY)


@dataclass(frozen=True)
class KekSettings:
    """The rekey SA and how GROUPKEY-PUSH messages are sent (Junos ``server-member-communication``).

    ``multicast`` is the push destination for ``MULTICAST``; unicast pushes
    go to each member's registration address.
    """

    communication: CommunicationType = CommunicationType.UNICAST
    algorithm: KekAlgorithm = KekAlgorithm.AES
    key_bits: int | None = 128
    lifetime: int = 3600
    sig_hash: SigHashAlgorithm = SigHashAlgorithm.SHA256
    retransmission_period: int = 10
    retransmissions: int = 2
    ack: AckRequest | None = RFC8263_ACK
    multicast: Endpoint | None = None
    signing_key: Path | None = None


@dataclass(frozen=True)
class ServerGroup:
    name: str
    group_id: int
    gateways: tuple[ServerGateway, ...]
    sas: tuple[IpsecSa, ...]
    kek: KekSettings = KekSettings()
    gap: GroupAssociatedPolicy = NO_GAP
    rekey_fraction: float = DEFAULT_REKEY_PERCENTAGE / 100

    @property
    def deny(self) -> tuple[TrafficSelector, ...]:
        """The group's deny entries, from every SA."""
        return tuple(selector for sa in self.sas for selector in sa.deny)


@dataclass(frozen=True)
class KeyServerConfig:
    address: Address
    gateways: tuple[ServerGateway, ...]
    groups: tuple[ServerGroup, ...]
    port: int = GDOI_PORT
    state_file: Path = DEFAULT_STATE_FILE
    routing_instance: str | None = None

    @property
    def suites(self) -> tuple[Suite, ...]:
        """Every gateway's Phase 1 suites, in order, each once: the key server accepts any of them."""
        suites = (suite for gateway in self.gateways for suite in gateway.policy.suites)
        return tuple(dict.fromkeys(suites))


# -- loading ------------------------------------------------------------------------


def load(text: str, role: Role | None = None) -> KeyServerConfig | MemberConfig:
    """The configuration ``text`` holds, for ``role`` or the daemon it configures."""
    if role is None:
        role = detect_role(text)
    return load_server(text) if role is Role.SERVER else load_member(text)


def load_server(text: str) -> KeyServerConfig:
    return _build(text, SERVER, _server)


def load_member(text: str) -> MemberConfig:
    return _build(text, MEMBER, _member)


def detect_role(text: str) -> Role:
    """``SERVER`` for ``security group-vpn server``, ``MEMBER`` for ``... member``; one of them."""
    tree = parse(text, EITHER).effective()
    group_vpn = _descend(tree, "security", "group-vpn")
    server, member = (None, None) if group_vpn is None else (group_vpn.child("server"), group_vpn.child("member"))
    if server is not None and member is not None:
        later = max(server, member, key=lambda node: node.position())
        message = "both 'group-vpn server' and 'group-vpn member' are configured; a file configures one daemon"
        raise ConfigError([Problem(*later.position(), message)])
    if server is None and member is None:
        raise ConfigError(
            [Problem(1, 1, "neither 'security group-vpn server' nor 'security group-vpn member' is configured")]
        )
    return Role.SERVER if server is not None else Role.MEMBER


def _build(text: str, root: Statement, build: Callable[[_Checker, Node], T | None]) -> T:
    checker = _Checker()
    config = build(checker, parse(text, root).effective())
    if checker.problems or config is None:
        raise ConfigError(checker.problems)
    return config


def _block(checker: _Checker, tree: Node, role: Role) -> Node | None:
    """``security group-vpn server`` or ``... member``; a problem at the start of the text if absent."""
    block = _descend(tree, "security", "group-vpn", role.value)
    if block is None:
        checker.problems.append(Problem(1, 1, f"'security group-vpn {role.value}' is not configured"))
    return block


def _descend(node: Node | None, *keywords: str) -> Node | None:
    for keyword in keywords:
        if node is None:
            return None
        node = node.child(keyword)
    return node


class _Checker:
    """Collects problems while a configuration is built from its tree."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def report(self, node: Node, message: str, index: int | None = None) -> None:
        self.problems.append(Problem(*node.position(index), message))

    def mark(self) -> int:
        return len(self.problems)

    def clean(self, mark: int) -> bool:
        """No problem since ``mark``: what was read is whole."""
        return len(self.problems) == mark

    def parse(self, node: Node, parse: Callable[[str], T], index: int = 0) -> T | None:
        text = node.values[index]
        try:
            return parse(text)
        except ValueError as error:
            self.report(node, f"invalid value '{text}' for '{node.keyword}' ({error})", index)
            return None

    def optional(self, parent: Node, keyword: str, parse: Callable[[str], T]) -> T | None:
        node = parent.child(keyword)
        return None if node is None else self.parse(node, parse)

    def setting(self, parent: Node, keyword: str, parse: Callable[[str], T], default: T) -> T:
        """A value with a default; an invalid value is reported and stands in as the default."""
        value = self.optional(parent, keyword, parse)
        return default if value is None else value

    def required(self, parent: Node, keyword: str, label: str) -> Node | None:
        node = parent.child(keyword)
        if node is None:
            self.report(parent, f"missing '{keyword}' in {label}")
        return node

    def reference(self, node: Node, index: int, table: Mapping[str, T | None], kind: str) -> T | None:
        """The object value ``index`` names; None if undefined (reported) or itself invalid (reported there)."""
        name = node.values[index]
        if name not in table:
            defined = ", ".join(table) or "none"
            self.report(node, f"undefined {kind} '{name}' (defined: {defined})", index)
            return None
        return table[name]


def _named(
    checker: _Checker, parent: Node | None, keyword: str, build: Callable[[_Checker, Node], T | None]
) -> dict[str, T | None]:
    """Every ``keyword NAME`` under ``parent`` built, by name (None for an invalid one)."""
    if parent is None:
        return {}
    return {node.value: build(checker, node) for node in parent.children_named(keyword)}


def _chosen(parent: Node, keyword: str, meaning: Callable[[str], T], default: T) -> T:
    """What a keyword the schema restricts to its choices means (so it cannot be invalid)."""
    node = parent.child(keyword)
    return default if node is None else meaning(node.value)


def _valid(objects: Iterable[T | None]) -> tuple[T, ...]:
    return tuple(obj for obj in objects if obj is not None)


# -- Phase 1 -------------------------------------------------------------------------


def _ike_proposal(checker: _Checker, node: Node) -> IkeProposal | None:
    label = f"ike proposal {node.value}"
    cipher = checker.required(node, "encryption-algorithm", label)
    hash_ = checker.required(node, "authentication-algorithm", label)
    group = checker.required(node, "dh-group", label)
    lifetime = checker.setting(node, "lifetime-seconds", integer(180, 86400), DEFAULT_IKE_LIFETIME)
    if cipher is None or hash_ is None or group is None:
        return None
    encryption, key_length = IKE_CIPHERS[cipher.value]
    return IkeProposal(
        node.value, Suite(encryption, key_length, IKE_HASHES[hash_.value], DH_GROUPS[group.value], lifetime)
    )


def _ike_policy(checker: _Checker, node: Node, proposals: Mapping[str, IkeProposal | None]) -> IkePolicy | None:
    label = f"ike policy {node.value}"
    mark = checker.mark()
    listed = checker.required(node, "proposals", label)
    chosen = (
        ()
        if listed is None
        else tuple(checker.reference(listed, i, proposals, "ike proposal") for i in range(len(listed.values)))
    )
    key = checker.required(node, "pre-shared-key", label)
    psk = None if key is None else _pre_shared_key(checker, key, node.value)
    if not checker.clean(mark) or psk is None or None in chosen:
        return None
    return IkePolicy(node.value, _valid(chosen), psk)


def _pre_shared_key(checker: _Checker, node: Node, policy: str) -> PreSharedKey | None:
    """The key of ``pre-shared-key``; messages say how long it is, never what it is."""
    forms = [child for child in node.children if child.keyword in ("ascii-text", "hexadecimal")]
    if len(forms) != 1:
        what = "both" if forms else "neither"
        checker.report(node, f"pre-shared key for policy {policy}: give one of ascii-text and hexadecimal, not {what}")
        return None
    form = forms[0]
    text = form.value
    if form.keyword == "hexadecimal":
        if not _HEX.fullmatch(text):
            checker.report(form, f"pre-shared key for policy {policy} is not hexadecimal (pairs of digits 0-9, a-f)", 0)
            return None
        secret, unit = bytes.fromhex(text), "octets"
        length = len(secret)
    else:
        if text.startswith(_JUNOS_OBFUSCATED):
            checker.report(
                form,
                f"pre-shared key for policy {policy} is Junos '$9$' obfuscated text, which groupvpn does not "
                "decode; give the key itself",
                0,
            )
            return None
        secret, unit, length = text.encode(), "characters", len(text)
    if length < MIN_PSK_LENGTH:
        checker.report(
            form, f"pre-shared key for policy {policy} has {length} {unit}; at least {MIN_PSK_LENGTH} are required", 0
        )
        return None
    return PreSharedKey(secret)


def _ike(checker: _Checker, ike: Node | None) -> dict[str, IkePolicy | None]:
    """The IKE policies, by name, with their proposals resolved."""
    proposals = _named(checker, ike, "proposal", _ike_proposal)
    return _named(checker, ike, "policy", lambda c, node: _ike_policy(c, node, proposals))


def _local_address(checker: _Checker, node: Node) -> tuple[Address | None, str | None]:
    """``local-address ADDRESS [routing-instance NAME]``."""
    return checker.parse(node, address), checker.optional(node, "routing-instance", instance_name)


def _same_version(
    checker: _Checker, node: Node, index: int, value: Address | Prefix, other: Address | Prefix, what: str
) -> None:
    if value.version != other.version:
        checker.report(node, f"'{node.values[index]}' is IPv{value.version} but {what} is IPv{other.version}", index)


# -- member --------------------------------------------------------------------------


def _member(checker: _Checker, tree: Node) -> MemberConfig | None:
    member = _block(checker, tree, Role.MEMBER)
    if member is None:
        return None
    policies = _ike(checker, member.child("ike"))
    gateways = _named(checker, member.child("ike"), "gateway", lambda c, node: _member_gateway(c, node, policies))
    ipsec = member.child("ipsec")
    vpn_nodes = () if ipsec is None else ipsec.children_named("vpn")
    if not vpn_nodes:
        checker.report(member, "no group VPN configured (security group-vpn member ipsec vpn NAME)")
    units = _interfaces(checker, tree.child("interfaces"))
    filters = _service_filters(checker, tree.child("firewall"))
    service_sets = _service_sets(checker, tree.child("services"), vpn_nodes, units, filters)
    by_vpn = {service_set.vpn: service_set for service_set in service_sets}
    groups: dict[int, str] = {}
    vpns = _valid(_member_vpn(checker, node, gateways, groups, by_vpn.get(node.value)) for node in vpn_nodes)
    defined = _valid(f for family in filters.values() for f in family.values())
    return MemberConfig(vpns, service_sets, tuple(unit for unit, _ in units), defined)


def _member_gateway(checker: _Checker, node: Node, policies: Mapping[str, IkePolicy | None]) -> MemberGateway | None:
    label = f"ike gateway {node.value}"
    mark = checker.mark()
    policy_node = checker.required(node, "ike-policy", label)
    policy = None if policy_node is None else checker.reference(policy_node, 0, policies, "ike policy")
    listed = checker.required(node, "server-address", label)
    servers: tuple[Address | None, ...] = ()
    if listed is not None:
        servers = tuple(checker.parse(listed, address, i) for i in range(len(listed.values)))
        if len(servers) > MAX_SERVERS:
            checker.report(listed, f"{len(servers)} server addresses; at most {MAX_SERVERS} are allowed", MAX_SERVERS)
    local = checker.required(node, "local-address", label)
    local_address, instance = (None, None) if local is None else _local_address(checker, local)
    if listed is not None and local_address is not None:
        for i, server in enumerate(servers):
            if server is not None:
                _same_version(checker, listed, i, server, local_address, "local-address")
    server_port = checker.setting(node, "server-port", service_port, GDOI_PORT)
    if not checker.clean(mark) or policy is None or local_address is None:
        return None
    return MemberGateway(node.value, policy, _valid(servers), local_address, server_port, instance)


def _member_vpn(
    checker: _Checker,
    node: Node,
    gateways: Mapping[str, MemberGateway | None],
    groups: dict[int, str],
    service_set: ServiceSet | None,
) -> MemberVpn | None:
    label = f"ipsec vpn {node.value}"
    mark = checker.mark()
    gateway_node = checker.required(node, "ike-gateway", label)
    gateway = None if gateway_node is None else checker.reference(gateway_node, 0, gateways, "ike gateway")
    group_node = checker.required(node, "group", label)
    group_id = None if group_node is None else checker.parse(group_node, integer(1, MAX_UINT32))
    if group_node is not None and group_id is not None:
        other = groups.setdefault(group_id, node.value)
        if other != node.value:
            checker.report(group_node, f"group {group_id} is already the group of ipsec vpn {other}", 0)
    direction = _chosen(node, "match-direction", Direction, Direction.OUTPUT)
    df_bit = _chosen(node, "df-bit", DfBit, DfBit.CLEAR)
    rules = _fail_open(checker, node.child("fail-open"), label)
    if not checker.clean(mark) or gateway is None or group_id is None:
        return None
    return MemberVpn(node.value, group_id, gateway, direction, df_bit, rules, service_set)


def _fail_open(checker: _Checker, node: Node | None, label: str) -> tuple[FailOpenRule, ...]:
    if node is None:
        return ()
    rules = []
    for n, rule in enumerate(node.children_named("rule"), 1):
        if n == MAX_FAIL_OPEN_RULES + 1:
            checker.report(rule, f"{n}th fail-open rule in {label}; at most {MAX_FAIL_OPEN_RULES} are allowed")
        where = f"fail-open rule {rule.value} of {label}"
        source_node = checker.required(rule, "source-address", where)
        destination_node = checker.required(rule, "destination-address", where)
        source = None if source_node is None else checker.parse(source_node, prefix)
        destination = None if destination_node is None else checker.parse(destination_node, prefix)
        if source is not None and destination is not None:
            assert destination_node is not None
            _same_version(checker, destination_node, 0, destination, source, "source-address")
            rules.append(FailOpenRule(rule.value, source, destination))
    return tuple(rules)


_FAMILY_ADDRESSES = {"inet": inet_address, "inet6": inet6_address}
Filters = Mapping[str, Mapping[str, ServiceFilter | None]]  # by family keyword, then name


def _interfaces(checker: _Checker, interfaces: Node | None) -> tuple[tuple[InterfaceUnit, tuple[Node, ...]], ...]:
    """Every ``interfaces NAME unit N``, with its ``family inet`` and ``inet6`` (which apply service sets)."""
    if interfaces is None:
        return ()
    units = []
    for interface in interfaces.children:
        try:
            name = interface_name(interface.keyword)
        except ValueError as error:
            checker.report(interface, f"invalid interface name '{interface.keyword}' ({error})")
            continue
        for unit in interface.children_named("unit"):
            number = checker.parse(unit, integer(0, MAX_UNIT))
            families = tuple(f for f in (unit.child("family", n) for n in _FAMILY_ADDRESSES) if f is not None)
            written = ((a, _FAMILY_ADDRESSES[f.value]) for f in families for a in f.children_named("address"))
            addresses = tuple(checker.parse(a, parse) for a, parse in written)
            if number is not None and None not in addresses:
                units.append((InterfaceUnit(name, number, _valid(addresses)), families))
    return tuple(units)


def _service_sets(
    checker: _Checker,
    services: Node | None,
    vpns: tuple[Node, ...],
    units: tuple[tuple[InterfaceUnit, tuple[Node, ...]], ...],
    filters: Filters,
) -> tuple[ServiceSet, ...]:
    """Service sets with their VPN checked and the interface units they are applied to, through their filters."""
    nodes = () if services is None else services.children_named("service-set")
    defined = {node.value: node for node in nodes}
    vpn_names = {node.value: node.value for node in vpns}
    attachments: dict[str, list[ServiceAttachment]] = {name: [] for name in defined}
    chosen: _Chosen = {}
    for unit, families in units:
        for family in families:
            for direction in Direction:
                way = _descend(family, "service", direction.value)
                for applied in () if way is None else way.children_named("service-set"):
                    if checker.reference(applied, 0, defined, "service-set") is None:
                        continue
                    service_filter = _attached_filter(
                        checker, applied, (unit, family.value, direction), filters, chosen
                    )
                    attachment = ServiceAttachment(unit, direction, service_filter)
                    if attachment not in attachments[applied.value]:  # applied in both families without filters
                        attachments[applied.value].append(attachment)
    sets = []
    owners: dict[str, str] = {}
    for node in nodes:
        vpn_node = checker.required(node, "ipsec-group-vpn", f"service-set {node.value}")
        if vpn_node is None:
            continue
        if len(vpn_node.values) > 1:
            checker.report(
                vpn_node,
                f"second group VPN '{vpn_node.values[1]}' in service-set {node.value}; a service set applies one",
                1,
            )
        vpn = checker.reference(vpn_node, 0, vpn_names, "ipsec vpn")
        if vpn is None:
            continue
        owner = owners.setdefault(vpn, node.value)
        if owner != node.value:
            checker.report(
                vpn_node, f"ipsec vpn {vpn} is already applied by service-set {owner}; a VPN is in one service set", 0
            )
        service_interface = _descend(node, "interface-service", "service-interface")
        sets.append(
            ServiceSet(
                node.value,
                vpn,
                tuple(attachments[node.value]),
                None if service_interface is None else service_interface.value,
            )
        )
    return tuple(sets)


# -- key server ---------------------------------------------------------------------


def _server(checker: _Checker, tree: Node) -> KeyServerConfig | None:
    server = _block(checker, tree, Role.SERVER)
    if server is None:
        return None
    mark = checker.mark()
    policies = _ike(checker, server.child("ike"))
    gateways = _server_gateways(checker, server.child("ike"), policies)
    proposals = _named(checker, server.child("ipsec"), "proposal", _ipsec_proposal)
    group_nodes = server.children_named("group")
    if not group_nodes:
        checker.report(server, "no group configured (security group-vpn server group NAME)")
    ids: dict[int, str] = {}
    groups = _valid(_group(checker, node, gateways, proposals, ids) for node in group_nodes)
    located = _server_address(checker, server)
    port_number = checker.setting(server, "port", service_port, GDOI_PORT)
    state_file = checker.setting(server, "state-file", absolute_path, DEFAULT_STATE_FILE)
    if not checker.clean(mark) or located is None:
        return None
    own, instance = located
    return KeyServerConfig(own, _valid(gateways.values()), groups, port_number, state_file, instance)


def _server_address(checker: _Checker, server: Node) -> tuple[Address, str | None] | None:
    """The one address (and routing instance) of the key server, checked against every other mention."""
    listen = server.child("listen-address")
    instance = None
    mentions: list[tuple[Node, str]] = []  # (node, what), the first one defining the address
    if listen is not None:
        mentions.append((listen, "listen-address"))
        instance = checker.optional(listen, "routing-instance", instance_name)
    mentions += [
        (node, f"server-address of group {group.value}")
        for group in server.children_named("group")
        if (node := group.child("server-address")) is not None
    ]
    ike = server.child("ike")
    for gateway in () if ike is None else ike.children_named("gateway"):
        local = gateway.child("local-address")
        if local is not None:
            mentions.append((local, f"local-address of ike gateway {gateway.value}"))
            given = local.child("routing-instance")
            if given is not None and given.value != instance:
                own_instance = f"routing-instance {instance}" if instance else "no routing-instance"
                message = f"listen-address has {own_instance}; a key server runs in one routing instance"
                checker.report(given, f"routing-instance {given.value} differs from the key server's: {message}", 0)
    own: Address | None = None
    first = ""
    for node, what in mentions:
        value = checker.parse(node, address)
        if value is None:
            continue
        if own is None:
            own, first = value, what
        elif value != own:
            message = f"{what} {value} differs from the key server's address {own} ({first})"
            checker.report(node, f"{message}; a key server answers on one address", 0)
    if own is None:
        if not mentions:
            checker.report(server, "no key server address: set listen-address or a group's server-address")
        return None
    return own, instance


def _server_gateways(
    checker: _Checker, ike: Node | None, policies: Mapping[str, IkePolicy | None]
) -> dict[str, ServerGateway | None]:
    gateways = _named(checker, ike, "gateway", lambda c, node: _server_gateway(c, node, policies))
    # Main Mode picks the key by the member's address before it knows anything else.
    keys: dict[Address, tuple[PreSharedKey, str]] = {}
    wide: tuple[PreSharedKey, str] | None = None
    for node in () if ike is None else ike.children_named("gateway"):
        gateway = gateways[node.value]
        if gateway is None:
            continue
        if gateway.any_address:
            wide = wide or (gateway.policy.psk, gateway.name)
            if wide[0] != gateway.policy.psk:
                message = f"ike gateway {gateway.name} has another group-wide key than ike gateway {wide[1]}"
                checker.report(node.child("any-address") or node, f"{message}; there is one group-wide key")
        for i, member in enumerate(gateway.addresses):
            key, owner = keys.setdefault(member, (gateway.policy.psk, gateway.name))
            if key != gateway.policy.psk:
                message = f"member {member} is also listed in ike gateway {owner}, with another pre-shared key"
                checker.report(node.child("address") or node, message, i)
    return gateways


def _server_gateway(checker: _Checker, node: Node, policies: Mapping[str, IkePolicy | None]) -> ServerGateway | None:
    label = f"ike gateway {node.value}"
    mark = checker.mark()
    policy_node = checker.required(node, "ike-policy", label)
    policy = None if policy_node is None else checker.reference(policy_node, 0, policies, "ike policy")
    listed = node.child("address")
    wide = node.child("any-address")
    addresses: tuple[Address | None, ...] = ()
    if listed is not None and wide is not None:
        checker.report(wide, f"{label} lists member addresses and any-address; give one of them")
    elif listed is None and wide is None:
        checker.report(node, f"missing 'address' (members' addresses) or 'any-address' (group-wide key) in {label}")
    elif listed is not None:
        addresses = tuple(checker.parse(listed, address, i) for i in range(len(listed.values)))
    if not checker.clean(mark) or policy is None:
        return None
    return ServerGateway(node.value, policy, _valid(addresses))


def _ipsec_proposal(checker: _Checker, node: Node) -> IpsecProposal | None:
    label = f"ipsec proposal {node.value}"
    mark = checker.mark()
    cipher = checker.required(node, "encryption-algorithm", label)
    integrity = node.child("authentication-algorithm")
    lifetime = checker.setting(node, "lifetime-seconds", integer(MIN_LIFETIME, MAX_LIFETIME), DEFAULT_SA_LIFETIME)
    if cipher is None:
        return None
    transform, key_bits = ESP_CIPHERS[cipher.value]
    combined = cipher.value.endswith("-gcm")
    if combined and integrity is not None:
        checker.report(integrity, f"{cipher.value} has its own integrity; remove authentication-algorithm from {label}")
    elif not combined and integrity is None:
        checker.report(node, f"missing 'authentication-algorithm' in {label} ({cipher.value} needs one)")
    if not checker.clean(mark):
        return None
    auth = None if integrity is None else ESP_INTEGRITY[integrity.value]
    return IpsecProposal(node.value, esp_suite(transform, key_bits, auth), lifetime)


def _group(
    checker: _Checker,
    node: Node,
    gateways: Mapping[str, ServerGateway | None],
    proposals: Mapping[str, IpsecProposal | None],
    ids: dict[int, str],
) -> ServerGroup | None:
    label = f"group {node.value}"
    mark = checker.mark()
    id_node = checker.required(node, "group-id", label)
    group_id = None if id_node is None else checker.parse(id_node, integer(1, MAX_UINT32))
    if id_node is not None and group_id is not None:
        other = ids.setdefault(group_id, node.value)
        if other != node.value:
            checker.report(id_node, f"group-id {group_id} is already the id of group {other}", 0)
    listed = checker.required(node, "ike-gateway", label)
    members = (
        ()
        if listed is None
        else tuple(checker.reference(listed, i, gateways, "ike gateway") for i in range(len(listed.values)))
    )
    sa_nodes = node.children_named("ipsec-sa")
    if not sa_nodes:
        checker.report(node, f"missing 'ipsec-sa' in {label}")
    sas = tuple(_ipsec_sa(checker, sa, proposals, f"{label} ipsec-sa {sa.value}") for sa in sa_nodes)
    percentage = checker.setting(node, "rekey-percentage", integer(1, 50), DEFAULT_REKEY_PERCENTAGE)
    gap = _gap(checker, node, label)
    kek = _kek(checker, node.child("server-member-communication"))
    if not checker.clean(mark) or group_id is None or None in members or None in sas:
        return None
    return ServerGroup(node.value, group_id, _valid(members), _valid(sas), kek, gap, percentage / 100)


def _gap(checker: _Checker, node: Node, label: str) -> GroupAssociatedPolicy:
    delay = integer(0, 0xFFFF)
    window = checker.optional(node, "anti-replay-time-window", integer(1, 0xFFFF))
    off = node.child("no-anti-replay")
    if off is not None:
        if window is not None:
            checker.report(off, f"{label} sets anti-replay-time-window and no-anti-replay; give one of them")
        window = 0
    return GroupAssociatedPolicy(
        checker.optional(node, "activation-time-delay", delay),
        checker.optional(node, "deactivation-time-delay", delay),
        window,
    )


def _kek(checker: _Checker, node: Node | None) -> KekSettings:
    if node is None:
        return KekSettings()
    defaults = KekSettings()
    communication = _chosen(node, "communication-type", CommunicationType, defaults.communication)
    algorithm, key_bits = _chosen(
        node, "encryption-algorithm", KEK_CIPHERS.__getitem__, (defaults.algorithm, defaults.key_bits)
    )
    ack = _chosen(node, "ack-request", AckMode, AckMode.RFC8263)
    group_node, port_node = node.child("multicast-group"), node.child("multicast-port")
    multicast = None
    if communication is CommunicationType.MULTICAST:
        group_node = checker.required(
            node, "multicast-group", "server-member-communication with communication-type multicast"
        )
        group = None if group_node is None else checker.parse(group_node, _multicast)
        multicast_port = checker.setting(node, "multicast-port", service_port, GDOI_PORT)
        multicast = None if group is None else Endpoint(group, multicast_port)
    else:
        for stray in (group_node, port_node):
            if stray is not None:
                checker.report(stray, f"'{stray.keyword}' needs communication-type multicast")
    return KekSettings(
        communication,
        algorithm,
        key_bits,
        checker.setting(node, "lifetime-seconds", integer(MIN_LIFETIME, MAX_LIFETIME), defaults.lifetime),
        _chosen(node, "sig-hash-algorithm", SIG_HASHES.__getitem__, defaults.sig_hash),
        checker.setting(node, "retransmission-period", integer(1, 600), defaults.retransmission_period),
        checker.setting(node, "number-of-retransmission", integer(0, 10), defaults.retransmissions),
        {AckMode.RFC8263: RFC8263_ACK, AckMode.LEGACY: LEGACY_ACK, AckMode.NONE: None}[ack],
        multicast,
        checker.optional(node, "signing-key", absolute_path),
    )


def _multicast(text: str) -> Address:
    value = address(text)
    if not value.is_multicast:
        raise ValueError("expected a multicast address")
    return value


def _ipsec_sa(
    checker: _Checker, node: Node, proposals: Mapping[str, IpsecProposal | None], label: str
) -> IpsecSa | None:
    mark = checker.mark()
    proposal_node = checker.required(node, "proposal", label)
    proposal = None if proposal_node is None else checker.reference(proposal_node, 0, proposals, "ipsec proposal")
    policies = [
        (m, _match_policy(checker, m, f"{label} match-policy {m.value}")) for m in node.children_named("match-policy")
    ]
    permits = [(m, p) for m, p in policies if p is not None and p.action is PolicyAction.PERMIT]
    if not any(p is None or p.action is PolicyAction.PERMIT for _, p in policies):
        checker.report(node, f"no permit match-policy in {label}; a TEK needs traffic to protect")
    for extra, policy in permits[1:]:
        first = permits[0][1]
        if len(permits) > 2 or policy.selector != first.selector.mirrored():
            message = f"{label} already permits match-policy {first.name}; an SA covers one selector or two"
            checker.report(extra, f"{message} that mirror each other (RFC 6407 §5.5): give this one its own ipsec-sa")
    if not checker.clean(mark) or proposal is None:
        return None
    return IpsecSa(node.value, proposal, _valid(p for _, p in policies))


def _match_policy(checker: _Checker, node: Node, label: str) -> MatchPolicy | None:
    mark = checker.mark()
    source_node = checker.required(node, "source", label)
    destination_node = checker.required(node, "destination", label)
    source = None if source_node is None else checker.parse(source_node, prefix)
    destination = None if destination_node is None else checker.parse(destination_node, prefix)
    number = checker.setting(node, "protocol", protocol, 0)
    ports = []
    for keyword in ("source-port", "destination-port"):
        port_node = node.child(keyword)
        value = 0 if port_node is None else checker.parse(port_node, port)
        if port_node is not None and value and not number:
            checker.report(port_node, f"{keyword} {value} needs a protocol in {label}", 0)
        ports.append(value or 0)
    if source is not None and destination is not None:
        assert destination_node is not None
        _same_version(checker, destination_node, 0, destination, source, "source")
    action = _chosen(node, "action", ACTIONS.__getitem__, PolicyAction.PERMIT)
    if not checker.clean(mark) or source is None or destination is None:
        return None
    selector = TrafficSelector(number, Endpoint(source, ports[0]), Endpoint(destination, ports[1]))
    return MatchPolicy(node.value, selector, action)


# -- service filters ------------------------------------------------------------------


# (service set, direction, family) -> (the filter it has there, or None; the interface it was first seen on)
_Chosen = dict[tuple[str, Direction, str], tuple[str | None, str]]


def _attached_filter(
    checker: _Checker,
    applied: Node,
    where: tuple[InterfaceUnit, str, Direction],
    filters: Filters,
    chosen: _Chosen,
) -> ServiceFilter | None:
    """The filter of ``service-set NAME [service-filter F]`` applied at ``where``, the same as elsewhere there."""
    unit, family, direction = where
    named = applied.child("service-filter")
    name = None if named is None else named.value
    own = filters.get(family, {})
    if named is not None and name not in own:
        others = [other for other, defined in filters.items() if other != family and name in defined]
        hint = f"; '{name}' is a family {others[0]} service-filter" if others else ""
        checker.report(
            named, f"undefined {family} service-filter '{name}' (defined: {', '.join(own) or 'none'}){hint}", 0
        )
        return None
    first, seen = chosen.setdefault((applied.value, direction, family), (name, unit.interface))
    if first != name:
        has = "no service-filter" if name is None else f"service-filter {name}"
        message = (
            f"service-set {applied.value} has {has} in the {direction.value} direction of family {family} on "
            f"{unit.interface}, but {first or 'none'} on {seen}; one filter applies per direction and family "
            "(the steering cannot tell the interfaces of a direction apart)"
        )
        checker.report(named or applied, message, None if named is None else 0)
    return None if name is None else own[name]


def _service_filters(checker: _Checker, firewall: Node | None) -> dict[str, dict[str, ServiceFilter | None]]:
    """Every ``firewall family F service-filter NAME``, by family keyword and name (None for an invalid one)."""
    found = {}
    for family in () if firewall is None else firewall.children_named("family"):
        build = partial(_service_filter, family=family.value)
        found[family.value] = _named(checker, family, "service-filter", build)
    return found


def _service_filter(checker: _Checker, node: Node, *, family: str) -> ServiceFilter | None:
    label = f"{family} service-filter {node.value}"
    mark = checker.mark()
    terms = node.children_named("term")
    if len(terms) > MAX_FILTER_TERMS:
        message = f"{len(terms)} terms in {label}; at most {MAX_FILTER_TERMS} are allowed (one rule preference each)"
        checker.report(terms[MAX_FILTER_TERMS], message)
    built = tuple(_filter_term(checker, term, FAMILIES[family], f"term {term.value} of {label}") for term in terms)
    if not checker.clean(mark):
        return None
    return ServiceFilter(node.value, FAMILIES[family], _valid(built))


def _filter_term(checker: _Checker, node: Node, version: int, label: str) -> FilterTerm | None:
    mark = checker.mark()
    conditions = node.child("from")
    sources, destinations = (
        _filter_prefixes(checker, conditions, f"{end}-address", version, label) for end in ("source", "destination")
    )
    protocols = _filter_protocols(checker, conditions, version, label)
    source_ports, destination_ports = (
        _filter_ports(checker, conditions, f"{end}-port", protocols, label) for end in ("source", "destination")
    )
    lists = (sources, destinations, protocols, source_ports, destination_ports)
    combinations = math.prod(max(1, len(values)) for values in lists)
    if combinations > MAX_TERM_SELECTORS:
        message = f"{label} matches {combinations} combinations of addresses, protocols and ports"
        checker.report(node, f"{message}; at most {MAX_TERM_SELECTORS} (one ip rule each): split it into terms")
    then = node.child("then")
    actions = () if then is None else then.children
    if len(actions) > 1:
        checker.report(actions[1], f"{label} is both 'service' and 'skip'; give one of them")
    if not checker.clean(mark):
        return None
    action = FilterAction(actions[0].keyword) if actions else FilterAction.SERVICE
    return FilterTerm(node.value, sources, destinations, protocols, source_ports, destination_ports, action)


def _filter_prefixes(
    checker: _Checker, conditions: Node | None, keyword: str, version: int, label: str
) -> tuple[Prefix, ...]:
    """The prefixes of ``source-address`` or ``destination-address`` (each written as a statement)."""
    listed = None if conditions is None else conditions.child(keyword)
    prefixes = []
    for entry in () if listed is None else listed.children:
        excluded = entry.child("except")
        if excluded is not None:
            message = f"'except' in {keyword} of {label} is not supported: ip rules cannot exclude a prefix"
            checker.report(excluded, f"{message}; put a term for it before this one instead")
            continue
        try:
            value = prefix(entry.keyword)
        except ValueError as error:
            checker.report(entry, f"invalid value '{entry.keyword}' for '{keyword}' ({error})")
            continue
        if value.version != version:
            checker.report(entry, f"'{entry.keyword}' is IPv{value.version} but {label} is IPv{version}")
            continue
        prefixes.append(value)
    return tuple(dict.fromkeys(prefixes))


def _filter_protocols(checker: _Checker, conditions: Node | None, version: int, label: str) -> tuple[int, ...]:
    """``protocol`` (family inet) or ``next-header`` (inet6), as Junos names them."""
    keyword, other = ("protocol", "next-header") if version == 4 else ("next-header", "protocol")
    misplaced = None if conditions is None else conditions.child(other)
    if misplaced is not None:
        checker.report(misplaced, f"{label} is IPv{version}: its terms match '{keyword}', not '{other}'")
    listed = None if conditions is None else conditions.child(keyword)
    if listed is None:
        return ()
    return _distinct(checker, listed, filter_protocol)


_PORT_PROTOCOL_NAMES = ", ".join(
    next(
        (name for name, number in PROTOCOLS.items() if number == protocol), f"{int(protocol)} ({protocol.name.lower()})"
    )
    for protocol in sorted(PORT_PROTOCOLS)
)


def _filter_ports(
    checker: _Checker, conditions: Node | None, keyword: str, protocols: tuple[int, ...], label: str
) -> tuple[PortRange, ...]:
    listed = None if conditions is None else conditions.child(keyword)
    if listed is None:
        return ()
    if not protocols or not set(protocols) <= PORT_PROTOCOLS:
        message = f"'{keyword}' in {label} needs protocols that have ports, and only those ({_PORT_PROTOCOL_NAMES})"
        checker.report(listed, f"{message}: ip rules read other protocols' first octets as ports (ESP's SPI)")
    return _distinct(checker, listed, port_range)


def _distinct(checker: _Checker, listed: Node, parse: Callable[[str], T]) -> tuple[T, ...]:
    """A list's valid values, each once (names and numbers may say the same)."""
    return tuple(dict.fromkeys(_valid(checker.parse(listed, parse, i) for i in range(len(listed.values)))))
