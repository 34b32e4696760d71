"""The member's configuration and SA database in the data plane's terms: pure translation, no I/O.

``describe`` turns a VPN's settings and the interfaces of its namespace
into a ``DataplaneDescription`` (or ``NoDataplane`` saying why the VPN can
have none); ``policy_state`` turns one group's ``GroupSnapshot`` at some
instant into the ``PolicyState`` the workers enforce until the snapshot's
``valid_until`` or the next database change.  The daemon calls both;
everything they need arrives as arguments.

Which interfaces are steered (project rule; Junos applies an
interface-style service set to the traffic crossing the interface it is
on, and Linux policy routing can only select by input interface): the
interfaces the VPN's service set is applied to *in its match direction*
form one side, every other interface of the namespace (but loopback and
TUN devices) the other.

* ``match-direction output`` (the seed's and the lab's shape: the service
  set on the WAN interface holding the gateway's local address): traffic
  leaving the attached interfaces is protected, so they are the WAN (where
  the group's ESP arrives) and the other interfaces are the LAN.
* ``match-direction input``: traffic entering the attached interfaces is
  protected, so they are the LAN and the other interfaces the WAN.

A service set on loopback protects nothing (no data plane).  The WAN MTU
is the smallest of the WAN interfaces' MTUs.  Control traffic with the
VPN's key servers (UDP to and from the server port and 500) is bypassed,
before anything else.

Service filters (``service-set S service-filter F`` where the set is
applied; terms in order, ``skip`` and no match bypass the VPN): the
filter of the match direction decides which traffic entering the LAN is
steered into the data plane, the filter of the other direction which ESP
entering the WAN is (matched on its outer header: terms naming other
protocols or ports cannot match ESP and drop out; with address
preservation the outer addresses are the hosts').  Junos filters the
traffic crossing the interface the filter is attached to; policy routing
selects by input interface only, so a filter covers all of its
direction's input interfaces, and the configuration allows one filter per
direction and family.  In the seed's shape (the set applied both ways on
the WAN, match direction output) that is the router's behaviour: the
output filter picks what the LAN sends into the VPN, the input filter
what arriving ESP is decrypted.  A family the namespace does not steer
needs no filter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network, summarize_address_range
from itertools import product

from ..config.model import FAMILIES, MemberVpn, ServiceAttachment
from ..config.model import FailOpenRule as ConfiguredFailOpen
from ..config.model import FilterTerm as ConfiguredTerm
from ..config.model import ServiceFilter as ConfiguredFilter
from ..config.values import DfBit, Direction, FilterAction
from ..dataplane.channel import PolicyState
from ..dataplane.esp_path import PRESERVES_DESTINATION, PRESERVES_SOURCE, DfMode, SaConfig
from ..dataplane.manager import DataplaneDescription
from ..dataplane.spd import ANY_PORT, FailOpenRule, FilterTerm, Prefix, Rule, Selector, ServiceFilter
from ..dataplane.steering import SteeringPlan, key_server_bypass
from ..gdoi.policy import Address as PolicyAddress
from ..gdoi.policy import SenderIds, TrafficSelector
from ..wire.ident import AddressRange
from ..wire.numbers import IKE_PORT, PolicyAction, SaDirection
from .member import Failure, GatewaySettings, Registration
from .sadb import GroupSnapshot, TekSa
from .sadb import Rule as GroupRule

IpAddress = IPv4Address | IPv6Address


class NoDataplane(Exception):
    """The VPN cannot have a data plane with this configuration and these interfaces; the message says why."""


@dataclass(frozen=True)
class TrafficSettings:
    """What of a VPN's configuration the data plane uses (``VpnSettings.traffic``: a change re-registers)."""

    match_direction: Direction = Direction.OUTPUT
    df_bit: DfBit = DfBit.CLEAR
    fail_open: tuple[ConfiguredFailOpen, ...] = ()
    attachments: tuple[ServiceAttachment, ...] = ()

    @classmethod
    def of(cls, vpn: MemberVpn) -> TrafficSettings:
        attachments = vpn.service_set.attachments if vpn.service_set is not None else ()
        return cls(vpn.match_direction, vpn.df_bit, vpn.fail_open, attachments)

    @property
    def attached(self) -> tuple[str, ...]:
        """The interfaces the service set is applied to in the match direction, in configuration order."""
        names = (a.unit.interface for a in self.attachments if a.direction is self.match_direction)
        return tuple(dict.fromkeys(names))

    @property
    def reverse_direction(self) -> Direction:
        return Direction.INPUT if self.match_direction is Direction.OUTPUT else Direction.OUTPUT

    def filters(self, direction: Direction) -> tuple[ConfiguredFilter, ...]:
        """The service filters applied in ``direction``, one per family at most (the configuration's rule)."""
        found = (a.service_filter for a in self.attachments if a.direction is direction)
        return tuple(dict.fromkeys(f for f in found if f is not None))

    @property
    def filter_names(self) -> str:
        """The service filters by direction and family, for the log and ``show`` ("none" without)."""
        family = {version: keyword for keyword, version in FAMILIES.items()}
        named = (f"{d.value} {f.name} ({family[f.family]})" for d in Direction for f in self.filters(d))
        return ", ".join(named) or "none"


@dataclass(frozen=True, slots=True)
class Interface:
    """An interface of the member's namespace; ``steerable`` is False for loopback and TUN devices."""

    name: str
    mtu: int
    steerable: bool = True


def describe(
    number: int,
    traffic: TrafficSettings,
    gateway: GatewaySettings,
    interfaces: Sequence[Interface],
    ipv6: bool = False,
) -> DataplaneDescription:
    """The data plane of the VPN numbered ``number`` (0-99: its TUN names, tables and rule preferences).

    ``ipv6``: the namespace forwards IPv6, so IPv6 is steered too.
    Raises ``NoDataplane``.
    """
    attached = traffic.attached
    if not attached:
        direction = traffic.match_direction.value
        raise NoDataplane(f"its service set is applied to no interface in the {direction} direction")
    present = {i.name: i for i in interfaces}
    missing = [name for name in attached if name not in present]
    if missing:
        raise NoDataplane(f"interface {', '.join(missing)} does not exist")
    unsteerable = [name for name in attached if not present[name].steerable]
    if unsteerable:
        raise NoDataplane(f"its service set is applied to {', '.join(unsteerable)}, which carries no transit traffic")
    others = tuple(i.name for i in interfaces if i.steerable and i.name not in attached)
    if not others:
        side = "LAN" if traffic.match_direction is Direction.OUTPUT else "WAN"
        raise NoDataplane(f"no {side} interface: the namespace has none besides {', '.join(attached)}")
    lan, wan = (others, attached) if traffic.match_direction is Direction.OUTPUT else (attached, others)
    bypass = key_server_bypass(gateway.servers, (gateway.server_port, IKE_PORT))
    families = (4, 6) if ipv6 else (4,)
    outbound, inbound = (
        tuple(service_filter(f) for f in traffic.filters(direction) if f.family in families)
        for direction in (traffic.match_direction, traffic.reverse_direction)
    )
    plan = SteeringPlan.numbered(number, lan, wan, bypass, families, outbound, inbound)
    return DataplaneDescription(
        plan,
        mtu=min(present[name].mtu for name in wan),
        fail_open_rules=tuple(FailOpenRule(rule.source, rule.destination) for rule in traffic.fail_open),
    )


def service_filter(configured: ConfiguredFilter) -> ServiceFilter:
    """A configured service filter in data-plane terms: each term's lists expand to their cross product."""
    return ServiceFilter(
        configured.family,
        tuple(FilterTerm(_term_selectors(term), term.action is FilterAction.SKIP) for term in configured.terms),
    )


def _term_selectors(term: ConfiguredTerm) -> tuple[Selector, ...]:
    """One selector per combination of the term's lists (an empty list: anything)."""
    return tuple(
        Selector(source, destination, protocol, source_ports, destination_ports)
        for source, destination, protocol, source_ports, destination_ports in product(
            term.sources or (None,),
            term.destinations or (None,),
            term.protocols or (None,),
            term.source_ports or (ANY_PORT,),
            term.destination_ports or (ANY_PORT,),
        )
    )


# -- policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataplanePolicy:
    """A ``PolicyState`` and what of the group it leaves out, one line per TEK, for the operator."""

    state: PolicyState
    unusable: tuple[str, ...] = ()


class _Unusable(Exception):
    pass


def fail_open_active(registration: Registration, group: GroupSnapshot | None) -> bool:
    """The group has no live SA because its key servers do not answer (seed, "Partial Fail-Open").

    Off as soon as a TEK is installed, and never for other failures
    (a refusal is an answer).
    """
    failure = registration.last_failure
    keyless = group is None or not group.decrypt
    return keyless and failure is not None and failure.failure is Failure.NO_RESPONSE


def policy_state(
    version: int,
    group: GroupSnapshot | None,
    df_bit: DfBit,
    local_address: IpAddress,
    sender_ids: SenderIds | None = None,
    fail_open: bool = False,
) -> DataplanePolicy:
    """The workers' policy for ``group`` as snapshotted (None: nothing installed).

    Rules: the group's deny entries, then its permit entries, each in the
    key server's order (a deny entry is an exception carved out of the
    group's policy; the key server sends permits first).  Every live TEK
    decrypts; each permit rule is encrypted by the TEK the snapshot says
    encrypts it, unless that TEK is receive-only or in counter mode
    without a Sender ID (RFC 6054: no IV space of our own), in which case
    the rule drops its traffic.  ``local_address`` is the outer source of
    SAs that do not preserve it.
    """
    if group is None:
        return DataplanePolicy(PolicyState(version, fail_open=fail_open))
    window = group.anti_replay_window or 0
    configs: dict[bytes, SaConfig] = {}
    unusable: list[str] = []
    for spi, tek in group.decrypt.items():
        try:
            configs[spi] = _sa_config(tek, DfMode(df_bit.value), window, local_address, sender_ids)
        except (_Unusable, ValueError) as problem:
            unusable.append(f"TEK 0x{spi.hex()}: {problem}")
    senders = set()
    for spi in configs:
        reason = _cannot_send(group.decrypt[spi], sender_ids)
        if reason is None:
            senders.add(spi)
        else:
            unusable.append(f"TEK 0x{spi.hex()}: {reason}")
    rules: list[Rule] = []
    encrypting: dict[str, int] = {}
    for group_rule, tek in sorted(group.encrypt, key=lambda pair: pair[0].action is PolicyAction.PERMIT):
        entries = _entries(group_rule)
        rules += entries
        if tek is not None and tek.spi in senders:
            encrypting.update((entry.name, configs[tek.spi].spi) for entry in entries)
    state = PolicyState(version, tuple(rules), tuple(configs.values()), encrypting, fail_open)
    return DataplanePolicy(state, tuple(unusable))


def _cannot_send(tek: TekSa, sender_ids: SenderIds | None) -> str | None:
    """Why this member may not encrypt with ``tek`` (None: it may)."""
    if tek.policy.direction is SaDirection.RECEIVER_ONLY:
        return "receiver-only: it decrypts but never encrypts"
    if tek.suite.counter_mode and sender_ids is None:
        return f"{tek.suite.name} needs a Sender ID to encrypt and the key server gave none"
    return None


def _sa_config(
    tek: TekSa, df: DfMode, window: int, local_address: IpAddress, sender_ids: SenderIds | None
) -> SaConfig:
    preservation = tek.policy.preservation
    remote = None
    if preservation not in PRESERVES_DESTINATION:
        remote = _single(tek.policy.selector.destination.address)
        if remote is None:
            raise _Unusable(
                f"the outer destination is not preserved ({preservation.name}) and "
                f"{tek.policy.selector.destination} is not one address"
            )
    sid, sid_bits = (0, 0)
    if tek.suite.counter_mode and sender_ids is not None:
        sid, sid_bits = sender_ids.values[0], sender_ids.bits
    return SaConfig(
        spi=int.from_bytes(tek.spi, "big"),
        suite=tek.suite,
        keys=tek.keys,
        preservation=preservation,
        local=None if preservation in PRESERVES_SOURCE else local_address,
        remote=remote,
        df=df,
        replay_window=window,
        sid=sid,
        sid_bits=sid_bits,
        selectors=tuple(s for selector in tek.selectors for s in selectors(selector)),
    )


def _single(address: PolicyAddress) -> IpAddress | None:
    if isinstance(address, IPv4Address | IPv6Address):
        return address
    if isinstance(address, AddressRange):
        return address.first if address.first == address.last else None
    return address.network_address if address.num_addresses == 1 else None


def _entries(rule: GroupRule) -> list[Rule]:
    """The SPD entries of one group rule: one per prefix pair its selector's ranges decompose into."""
    found = selectors(rule.selector)
    if len(found) == 1:
        return [Rule(rule.name, found[0], rule.action)]
    return [Rule(f"{rule.name} #{n}", selector, rule.action) for n, selector in enumerate(found, 1)]


def selectors(selector: TrafficSelector) -> tuple[Selector, ...]:
    """A GDOI selector as data-plane selectors (address ranges become the prefixes covering them)."""
    protocol = selector.protocol or None
    ports = tuple(ANY_PORT if e.port == 0 else (e.port, e.port) for e in (selector.source, selector.destination))
    return tuple(
        Selector(source, destination, protocol, ports[0], ports[1])
        for source in _prefixes(selector.source.address)
        for destination in _prefixes(selector.destination.address)
    )


def _prefixes(address: PolicyAddress) -> Iterable[Prefix]:
    if isinstance(address, AddressRange):
        return tuple(summarize_address_range(address.first, address.last))  # type: ignore[arg-type]
    return (ip_network(address),)

