"""Policy routing that steers the group's traffic through the packet path (this kernel has no IPsec).

Inside the member's namespace, ahead of the main table (lower preference
numbers are consulted first)::

    P     iif LAN|WAN <bypass selector>   lookup main     key servers, service filters
    P+1   iif LAN                          lookup T_out    -> default dev TUN_OUT (encrypt)
    P+1   iif WAN ipproto esp              lookup T_in     -> default dev TUN_IN  (decrypt)

Each steering table also holds a blackhole default of the highest metric:
if the TUN disappears (the data plane died), its route goes with it and
the traffic is discarded instead of falling through to the main table in
clear.  Traffic for the member itself never reaches these rules (the local
table comes first), so its own exchanges with the key servers are never
steered; the bypass rules keep *transit* control traffic and the service
filters' traffic out.  Packets the workers write back arrive with ``iif``
a TUN, which no rule names, so they are routed by the main table on their
preserved addresses and never steered again.

Two TUNs rather than one keep the direction exact: a LAN host's own ESP
is protected like any other traffic instead of being mistaken for the
group's inbound ESP.

Every rule and route carries protocol ``ROUTE_PROTOCOL``.  ``apply`` adds
routes before rules (a rule never points at an empty table, which would
fall through to the main table) and treats "already there" as ours, so it
is idempotent and adopts what a crashed predecessor left; ``remove``
deletes exactly what was added or adopted, rules first.  Everything runs
as ``ip -n NAMESPACE``: nothing outside the namespace is touched.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network

from ..wire.numbers import IpProtocol
from .spd import ANY_PORT, Selector
from .tun import valid_ifname

ROUTE_PROTOCOL = 71  # "proto 71" on our rules and routes; unassigned in iproute2's rt_protos
MAX_METRIC = 0xFFFFFFFF
MAX_TABLE = 0xFFFFFFFF
RESERVED_TABLES = frozenset({0, 253, 254, 255})  # unspec, default, main, local
MAIN_RULE_PRIORITY = 32766
COMMAND_TIMEOUT = 20.0
_GONE = ("No such file or directory", "No such process", "Cannot find device")


class SteeringError(RuntimeError):
    """The steering cannot be installed or removed; the message says what and why."""


@dataclass(frozen=True)
class IpCommand:
    """One rule or route: the ``ip`` arguments that add it and those that delete it."""

    family: int
    add: tuple[str, ...]
    delete: tuple[str, ...]


def _entry(family: int, kind: str, spec: Sequence[str]) -> IpCommand:
    return IpCommand(family, (kind, "add", *spec), (kind, "del", *spec))


def selector_arguments(selector: Selector) -> tuple[str, ...]:
    """The ``ip rule`` selector for ``selector`` (addresses, protocol, port ranges)."""
    args: list[str] = []
    if selector.source is not None:
        args += ["from", str(selector.source)]
    if selector.destination is not None:
        args += ["to", str(selector.destination)]
    if selector.protocol is not None:
        args += ["ipproto", str(int(selector.protocol))]
    for keyword, (low, high) in (("sport", selector.source_ports), ("dport", selector.destination_ports)):
        if (low, high) != ANY_PORT:
            args += [keyword, str(low) if low == high else f"{low}-{high}"]
    return tuple(args)


def _families_of(selector: Selector, families: tuple[int, ...]) -> tuple[int, ...]:
    prefix = selector.source or selector.destination
    return families if prefix is None else tuple(f for f in families if f == prefix.version)


@dataclass(frozen=True)
class SteeringPlan:
    """Which interfaces are steered into which TUN, through which tables, at which rule preference.

    ``lan``: interfaces whose entering traffic the service set protects;
    ``wan``: interfaces where the group's ESP arrives.  ``priority`` is
    the bypass rules' preference, ``priority + 1`` the steering rules'.
    """

    outbound_tun: str
    inbound_tun: str
    lan: tuple[str, ...]
    wan: tuple[str, ...]
    outbound_table: int
    inbound_table: int
    priority: int
    bypass: tuple[Selector, ...] = ()
    families: tuple[int, ...] = (4,)
    commands: tuple[IpCommand, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in (self.outbound_tun, self.inbound_tun, *self.lan, *self.wan):
            if not valid_ifname(name):
                raise SteeringError(f"{name!r} is not a Linux interface name (1 to 15 octets, no '/' or spaces)")
        if not self.lan or not self.wan:
            raise SteeringError("steering needs at least one LAN and one WAN interface")
        names = [self.outbound_tun, self.inbound_tun, *self.lan, *self.wan]
        if len(set(names)) != len(names):
            raise SteeringError(f"an interface is named twice among TUNs, LAN and WAN: {names}")
        for table in (self.outbound_table, self.inbound_table):
            if not 0 < table <= MAX_TABLE or table in RESERVED_TABLES:
                raise SteeringError(f"routing table {table} is reserved or out of range")
        if self.outbound_table == self.inbound_table:
            raise SteeringError("the outbound and inbound steering tables must differ")
        if not 0 < self.priority < MAIN_RULE_PRIORITY - 1:
            raise SteeringError(
                f"rule preference {self.priority} must leave room before the main table's {MAIN_RULE_PRIORITY}"
            )
        if not self.families or not set(self.families) <= {4, 6} or len(set(self.families)) != len(self.families):
            raise SteeringError(f"address families {self.families}: choose from 4 and 6")
        object.__setattr__(self, "commands", self._commands())

    @classmethod
    def numbered(
        cls,
        number: int,
        lan: Sequence[str],
        wan: Sequence[str],
        bypass: Sequence[Selector] = (),
        families: tuple[int, ...] = (4,),
    ) -> SteeringPlan:
        """The plan of the member's VPN number ``number`` (0..99): names, tables and preferences that never collide."""
        if not 0 <= number < 100:
            raise SteeringError(f"VPN number {number} is outside 0-99")
        return cls(
            outbound_tun=f"gvpn{number}o",
            inbound_tun=f"gvpn{number}i",
            lan=tuple(lan),
            wan=tuple(wan),
            outbound_table=7100 + 2 * number,
            inbound_table=7101 + 2 * number,
            priority=7100 + 2 * number,
            bypass=tuple(bypass),
            families=families,
        )

    def _commands(self) -> tuple[IpCommand, ...]:
        """Routes first, then bypass rules, then steering rules: the order ``apply`` adds them in."""
        tag = ("protocol", str(ROUTE_PROTOCOL))
        commands: list[IpCommand] = []
        for family in self.families:
            for tun, table in ((self.outbound_tun, self.outbound_table), (self.inbound_tun, self.inbound_table)):
                where = ("table", str(table), "proto", str(ROUTE_PROTOCOL))
                commands.append(_entry(family, "route", ("default", "dev", tun, *where)))
                commands.append(_entry(family, "route", ("blackhole", "default", "metric", str(MAX_METRIC), *where)))
        bypass = str(self.priority)
        for selector in self.bypass:
            for family in _families_of(selector, self.families):
                for iif in (*self.lan, *self.wan):
                    spec = ("pref", bypass, "iif", iif, *selector_arguments(selector), "lookup", "main", *tag)
                    commands.append(_entry(family, "rule", spec))
        steer = str(self.priority + 1)
        for family in self.families:
            to_outbound = ("lookup", str(self.outbound_table), *tag)
            to_inbound = ("ipproto", str(int(IpProtocol.ESP)), "lookup", str(self.inbound_table), *tag)
            commands += [_entry(family, "rule", ("pref", steer, "iif", iif, *to_outbound)) for iif in self.lan]
            commands += [_entry(family, "rule", ("pref", steer, "iif", iif, *to_inbound)) for iif in self.wan]
        return tuple(commands)


def key_server_bypass(servers: Sequence[str], ports: Sequence[int] = (848, 500)) -> tuple[Selector, ...]:
    """Selectors for control traffic to and from the key servers (GDOI and IKE ports), both directions."""
    selectors = []
    for server in servers:
        host = ip_network(server)
        for port in dict.fromkeys(ports):
            selectors.append(Selector(destination=host, protocol=IpProtocol.UDP, destination_ports=(port, port)))
            selectors.append(Selector(source=host, protocol=IpProtocol.UDP, source_ports=(port, port)))
    return tuple(selectors)


class IpFailed(SteeringError):
    """``ip`` refused a command; ``message`` is what iproute2 said (callers tell "already there" from real errors)."""

    def __init__(self, command: Sequence[str], message: str) -> None:
        super().__init__(f"{' '.join(command)}: {message}")
        self.message = message


Runner = Callable[[Sequence[str]], str]


def run_ip(command: Sequence[str]) -> str:
    """Run ``command`` (an ``ip`` invocation); its stdout, or IpFailed with iproute2's message."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except FileNotFoundError:
        raise SteeringError("iproute2's `ip` is not installed") from None
    if done.returncode != 0:
        raise IpFailed(command, done.stderr.strip() or f"exit status {done.returncode}")
    return done.stdout


class Steering:
    """The plan installed in one namespace; remembers what it added so that ``remove`` undoes exactly that."""

    def __init__(self, plan: SteeringPlan, namespace: str | None = None, *, runner: Runner = run_ip) -> None:
        self.plan = plan
        self.namespace = namespace
        self._run = runner
        self._installed: list[IpCommand] = []

    @property
    def installed(self) -> tuple[IpCommand, ...]:
        return tuple(self._installed)

    def _ip(self, family: int, args: Sequence[str]) -> str:
        where = ("-n", self.namespace) if self.namespace is not None else ()
        return self._run(("ip", *where, f"-{family}", *args))

    def apply(self) -> None:
        """Install the plan (idempotent); on failure, whatever was added is removed again."""
        self._check_interfaces()
        self._check_tables()
        try:
            for command in self.plan.commands:
                if command in self._installed:
                    continue
                try:
                    self._ip(command.family, command.add)
                except IpFailed as failed:
                    if "File exists" not in failed.message:
                        raise
                self._installed.append(command)
        except SteeringError:
            self.remove()
            raise

    def remove(self) -> None:
        """Delete what ``apply`` added, newest first (rules before routes); what is already gone is fine."""
        problems = []
        while self._installed:
            command = self._installed.pop()
            try:
                self._ip(command.family, command.delete)
            except IpFailed as failed:
                if not any(gone in failed.message for gone in _GONE):
                    problems.append(str(failed))
        if problems:
            raise SteeringError("; ".join(problems))

    def _check_interfaces(self) -> None:
        """Every LAN and WAN interface exists and forwards (steered packets are forwarded into the TUN)."""
        problems = []
        for family in self.plan.families:
            for name in (*self.plan.lan, *self.plan.wan):
                try:
                    words = self._ip(family, ("netconf", "show", "dev", name)).split()
                except IpFailed:
                    problems.append(f"there is no interface {name}")
                    continue
                if "forwarding" not in words or words[words.index("forwarding") + 1] != "on":
                    key = f"net.ipv{family}.conf.{name}.forwarding"
                    problems.append(f"{name} does not forward IPv{family} ({key} is 0)")
        if problems:
            raise SteeringError("; ".join(dict.fromkeys(problems)))

    def _check_tables(self) -> None:
        """Refuse tables that hold routes someone else put there."""
        for family in self.plan.families:
            for table in (self.plan.outbound_table, self.plan.inbound_table):
                try:
                    routes = json.loads(self._ip(family, ("-j", "route", "show", "table", str(table))) or "[]")
                except IpFailed as failed:
                    if "table does not exist" in failed.message:
                        continue
                    raise
                foreign = [r for r in routes if r.get("protocol") != str(ROUTE_PROTOCOL)]
                if foreign:
                    raise SteeringError(f"IPv{family} routing table {table} is in use by other routes ({len(foreign)})")
