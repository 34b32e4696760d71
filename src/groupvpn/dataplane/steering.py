"""Policy routing that steers the group's traffic through the packet path (this kernel has no IPsec).

Inside the member's namespace, ahead of the main table (lower preference
numbers are consulted first)::

    P     iif LAN|WAN <bypass selector>   lookup main     key servers
    P+1   iif LAN                          lookup T_out    -> default dev TUN_OUT (encrypt)
    P+1   iif WAN ipproto esp              lookup T_in     -> default dev TUN_IN  (decrypt)

A service filter replaces its direction's one steering rule by its
terms, term ``i`` at ``P+i`` (LAN and WAN rules never match the same
packet, so both directions use the same preferences), one rule per
selector, and nothing after the last: what no term matches goes on to
the main table, Junos's implicit ``skip``::

    P+i   iif LAN <term selector>              lookup main | T_out      skip | service
    P+i   iif WAN <term selector> ipproto esp  lookup main | T_in       (terms that can match ESP)

Each steering table also holds a blackhole default of the highest metric.
The blackholes and the rules are the *guard*: installed while the VPN is
configured, before its data plane exists, they drop the service set's
traffic; the data plane only adds and removes its TUN routes (``connect``,
``disconnect``), which win over the blackholes while they exist.  So the
member fails closed at every moment its data plane does not run: while it
starts, while it restarts (a changed VPN, its interfaces down and up),
after its workers died (a TUN's routes go with it) and after the member
exits, cleanly or not (the guard stays; the next member adopts it, and
removes a guard its own configuration no longer has: ``remove_leftovers``).
Traffic passes in clear only when the operator removes the service set.

Traffic for the member itself never reaches these rules (the local table
comes first), so its own exchanges with the key servers are never
steered; the bypass rules keep *transit* control traffic out.  Packets
the workers write back arrive with ``iif`` a TUN, which no rule names, so
they are routed by the main table on their preserved addresses and never
steered again.

Two TUNs rather than one keep the direction exact: a LAN host's own ESP
is protected like any other traffic instead of being mistaken for the
group's inbound ESP.

Every rule and route carries protocol ``ROUTE_PROTOCOL``.  Routes go in
before the rules that use them (a rule never points at an empty table,
which would fall through to the main table).  ``apply`` treats "already
there" as ours, so it is idempotent and adopts what a predecessor left
(``remove_leftovers`` deletes the rest of what it left);
``change`` moves to another plan adding before deleting; ``remove``
deletes exactly what was added or adopted, newest first.  Everything runs
as ``ip -n NAMESPACE``: nothing outside the namespace is touched.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from socket import getprotobyname
from typing import Any

from ..wire.numbers import IpProtocol
from .spd import ANY_PORT, MAX_FILTER_TERMS, FilterTerm, Selector, ServiceFilter
from .tun import valid_ifname

ROUTE_PROTOCOL = 71  # "proto 71" on our rules and routes; unassigned in iproute2's rt_protos
MAX_METRIC = 0xFFFFFFFF
MAX_TABLE = 0xFFFFFFFF
RESERVED_TABLES = frozenset({0, 253, 254, 255})  # unspec, default, main, local
MAIN_RULE_PRIORITY = 32766
FIRST_NUMBERED = 7100  # the first table and rule preference of the numbered plans
NUMBERED_PLANS = 100  # VPN numbers 0-99, two tables each
PLAN_PREFERENCES = 1 + MAX_FILTER_TERMS  # the bypass rules', then one per steering rule or filter term
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
    if selector.source is not None and selector.source.prefixlen:  # ip rule shows /0 as "all"
        args += ["from", str(selector.source)]
    if selector.destination is not None and selector.destination.prefixlen:
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
    the bypass rules' preference, the steering rules' follow it (up to
    ``PLAN_PREFERENCES`` in all).  ``outbound_filters`` and
    ``inbound_filters``: the service filters of the traffic entering the
    LAN and of the ESP entering the WAN, one per family at most (a family
    without one is steered whole).
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
    outbound_filters: tuple[ServiceFilter, ...] = ()
    inbound_filters: tuple[ServiceFilter, ...] = ()
    guard: tuple[IpCommand, ...] = field(init=False, repr=False, compare=False)
    tun_routes: tuple[IpCommand, ...] = field(init=False, repr=False, compare=False)

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
        if not 0 < self.priority < MAIN_RULE_PRIORITY - PLAN_PREFERENCES:
            last = self.priority + PLAN_PREFERENCES - 1
            raise SteeringError(
                f"rule preferences {self.priority}-{last} must leave room before the main table's {MAIN_RULE_PRIORITY}"
            )
        if not self.families or not set(self.families) <= {4, 6} or len(set(self.families)) != len(self.families):
            raise SteeringError(f"address families {self.families}: choose from 4 and 6")
        for filters in (self.outbound_filters, self.inbound_filters):
            families = [f.family for f in filters]
            if not set(families) <= set(self.families) or len(set(families)) != len(families):
                raise SteeringError(f"service filters of families {families}: one at most for each of {self.families}")
        object.__setattr__(self, "guard", self._guard())
        object.__setattr__(self, "tun_routes", self._tun_routes())

    @classmethod
    def numbered(
        cls,
        number: int,
        lan: Sequence[str],
        wan: Sequence[str],
        bypass: Sequence[Selector] = (),
        families: tuple[int, ...] = (4,),
        outbound_filters: tuple[ServiceFilter, ...] = (),
        inbound_filters: tuple[ServiceFilter, ...] = (),
    ) -> SteeringPlan:
        """The plan of the member's VPN number ``number`` (0..99): names, tables and preferences that never collide."""
        if not 0 <= number < NUMBERED_PLANS:
            raise SteeringError(f"VPN number {number} is outside 0-{NUMBERED_PLANS - 1}")
        return cls(
            outbound_tun=f"gvpn{number}o",
            inbound_tun=f"gvpn{number}i",
            lan=tuple(lan),
            wan=tuple(wan),
            outbound_table=FIRST_NUMBERED + 2 * number,
            inbound_table=FIRST_NUMBERED + 1 + 2 * number,
            priority=FIRST_NUMBERED + PLAN_PREFERENCES * number,
            bypass=tuple(bypass),
            families=families,
            outbound_filters=outbound_filters,
            inbound_filters=inbound_filters,
        )

    @property
    def tables(self) -> tuple[int, int]:
        return self.outbound_table, self.inbound_table

    @property
    def spd_bypass(self) -> tuple[FilterTerm, ...]:
        """The workers' bypass entries, in order: the key servers' traffic, then each family's outbound filter.

        A packet the rules should have kept out (it reached the TUN while
        they changed) is passed in clear just the same.
        """
        servers = (FilterTerm(self.bypass),) if self.bypass else ()
        return servers + tuple(term for service_filter in self.outbound_filters for term in service_filter.bypass())

    def _tun_routes(self) -> tuple[IpCommand, ...]:
        """Each table's default into its TUN (metric 0: it wins over the blackhole while the TUN exists)."""
        return tuple(
            _entry(family, "route", ("default", "dev", tun, "table", str(table), "proto", str(ROUTE_PROTOCOL)))
            for family in self.families
            for tun, table in ((self.outbound_tun, self.outbound_table), (self.inbound_tun, self.inbound_table))
        )

    def _guard(self) -> tuple[IpCommand, ...]:
        """Blackhole routes first, then bypass rules, then steering rules: the order ``apply`` adds them in."""
        tag = ("protocol", str(ROUTE_PROTOCOL))
        commands: list[IpCommand] = []
        for family in self.families:
            for table in self.tables:
                where = ("table", str(table), "proto", str(ROUTE_PROTOCOL))
                commands.append(_entry(family, "route", ("blackhole", "default", "metric", str(MAX_METRIC), *where)))
        bypass = str(self.priority)
        for selector in self.bypass:
            for family in _families_of(selector, self.families):
                for iif in (*self.lan, *self.wan):
                    spec = ("pref", bypass, "iif", iif, *selector_arguments(selector), "lookup", "main", *tag)
                    commands.append(_entry(family, "rule", spec))
        for family in self.families:
            outbound = _filtered(self.outbound_filters, family, Selector())
            inbound = _filtered(tuple(f.esp_only() for f in self.inbound_filters), family, Selector(protocol=_ESP))
            commands += self._steering(family, outbound, self.lan, self.outbound_table)
            commands += self._steering(family, inbound, self.wan, self.inbound_table)
        return tuple(commands)

    def _steering(
        self, family: int, terms: tuple[FilterTerm, ...], iifs: tuple[str, ...], table: int
    ) -> list[IpCommand]:
        """Term ``i``'s rules at preference ``priority + i``: to ``table`` (service) or the main table (skip)."""
        commands = []
        for preference, term in enumerate(terms, self.priority + 1):
            target = ("lookup", "main" if term.skip else str(table), "protocol", str(ROUTE_PROTOCOL))
            for selector in term.selectors:
                for iif in iifs:
                    spec = ("pref", str(preference), "iif", iif, *selector_arguments(selector), *target)
                    commands.append(_entry(family, "rule", spec))
        return commands


_ESP = int(IpProtocol.ESP)


def _filtered(filters: tuple[ServiceFilter, ...], family: int, everything: Selector) -> tuple[FilterTerm, ...]:
    """The steering terms of one direction and family: its filter's, or ``everything`` serviced."""
    service_filter = next((f for f in filters if f.family == family), None)
    return (FilterTerm((everything,), skip=False),) if service_filter is None else service_filter.terms


def key_server_bypass(servers: Sequence[str], ports: Sequence[int] = (848, 500)) -> tuple[Selector, ...]:
    """Selectors for control traffic to and from the key servers (GDOI and IKE ports), both directions."""
    selectors = []
    for server in servers:
        host = ip_network(server)
        for port in dict.fromkeys(ports):
            selectors.append(Selector(destination=host, protocol=IpProtocol.UDP, destination_ports=(port, port)))
            selectors.append(Selector(source=host, protocol=IpProtocol.UDP, source_ports=(port, port)))
    return tuple(selectors)


def _forwards(netconf: str, device: str) -> bool:
    """Whether ``ip netconf show`` output says ``device`` (or ``all``) forwards."""
    for line in netconf.splitlines():
        words = line.split()
        if words[1:2] == [device] and "forwarding" in words:
            return words[words.index("forwarding") + 1] == "on"
    return False


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
    """One VPN's steering in one namespace: its guard, and its TUN routes while a data plane is connected.

    Remembers what it added or adopted, so that ``remove`` undoes exactly that.
    """

    def __init__(self, plan: SteeringPlan, namespace: str | None = None, *, runner: Runner = run_ip) -> None:
        self.plan = plan
        self.namespace = namespace
        self._run = runner
        self._installed: list[IpCommand] = []

    @property
    def installed(self) -> tuple[IpCommand, ...]:
        return tuple(self._installed)

    @property
    def guarding(self) -> bool:
        """The whole guard is in place: the service set's traffic is dropped unless a data plane takes it."""
        return all(command in self._installed for command in self.plan.guard)

    @property
    def connected(self) -> bool:
        return any(command in self._installed for command in self.plan.tun_routes)

    def _ip(self, family: int, args: Sequence[str]) -> str:
        where = ("-n", self.namespace) if self.namespace is not None else ()
        return self._run(("ip", *where, f"-{family}", *args))

    def apply(self) -> None:
        """Install the guard (idempotent); on failure, what this call added is removed again."""
        self._check(self.plan)
        self._add(self.plan.guard)

    def change(self, plan: SteeringPlan) -> None:
        """Guard by ``plan`` from now on: its entries go in before the old ones it lacks are deleted.

        Only while no data plane is connected (one restarts with its new plan).
        """
        if self.connected:
            raise SteeringError("the steering of a connected data plane cannot change")
        self._check(plan)
        self._add(plan.guard)
        stale = [command for command in self._installed if command not in plan.guard]
        self.plan = plan
        self._delete(stale)

    def connect(self) -> None:
        """Add the TUN routes (the TUNs exist): the steered traffic goes to the data plane."""
        if not self.guarding:
            raise SteeringError("the steering's guard is not installed")
        self._add(self.plan.tun_routes)

    def disconnect(self) -> None:
        """Delete the TUN routes: the guard's blackholes take the steered traffic again."""
        self._delete([command for command in self._installed if command in self.plan.tun_routes])

    def remove(self) -> None:
        """Delete everything added or adopted, newest first (TUN routes, rules, routes); what is gone is fine."""
        self._delete(list(self._installed))

    def _add(self, commands: Sequence[IpCommand]) -> None:
        added = []
        try:
            for command in commands:
                if command in self._installed:
                    continue
                try:
                    self._ip(command.family, command.add)
                except IpFailed as failed:
                    if "File exists" not in failed.message:
                        raise
                self._installed.append(command)
                added.append(command)
        except SteeringError:
            self._delete(added)
            raise

    def _delete(self, commands: Sequence[IpCommand]) -> None:
        """Delete ``commands`` (some of those installed, oldest first) newest first; the problems are raised after."""
        problems = []
        for command in reversed(commands):
            self._installed.remove(command)
            try:
                self._ip(command.family, command.delete)
            except IpFailed as failed:
                if not any(gone in failed.message for gone in _GONE):
                    problems.append(str(failed))
        if problems:
            raise SteeringError("; ".join(problems))

    def _check(self, plan: SteeringPlan) -> None:
        self._check_interfaces(plan)
        self._check_tables(plan)

    def _check_interfaces(self, plan: SteeringPlan) -> None:
        """Every LAN and WAN interface exists and forwards (steered packets are forwarded into the TUN).

        The kernel forwards IPv6 only when the namespace's ``all`` setting
        says so, whatever the interfaces' own: without it IPv6 would be
        steered into nothing, silently.
        """
        problems = []
        for family in plan.families:
            for name in (*plan.lan, *plan.wan):
                try:
                    netconf = self._ip(family, ("netconf", "show", "dev", name))
                except IpFailed:
                    problems.append(f"there is no interface {name}")
                    continue
                if not _forwards(netconf, name):
                    key = f"net.ipv{family}.conf.{name}.forwarding"
                    problems.append(f"{name} does not forward IPv{family} ({key} is 0)")
        if 6 in plan.families and not _forwards(self._ip(6, ("netconf", "show")), "all"):
            problems.append("the namespace does not forward IPv6 (net.ipv6.conf.all.forwarding is 0)")
        if problems:
            raise SteeringError("; ".join(dict.fromkeys(problems)))

    def _check_tables(self, plan: SteeringPlan) -> None:
        """Refuse tables that hold routes someone else put there."""
        for family in plan.families:
            for table in plan.tables:
                try:
                    routes = json.loads(self._ip(family, ("-j", "route", "show", "table", str(table))) or "[]")
                except IpFailed as failed:
                    if "table does not exist" in failed.message:
                        continue
                    raise
                foreign = [r for r in routes if r.get("protocol") != str(ROUTE_PROTOCOL)]
                if foreign:
                    raise SteeringError(f"IPv{family} routing table {table} is in use by other routes ({len(foreign)})")


def remove_leftovers(namespace: str | None, kept: Iterable[SteeringPlan], *, runner: Runner = run_ip) -> list[str]:
    """Delete the numbered plans' rules and tables in ``namespace`` that none of ``kept`` has; what was deleted.

    A member that exits leaves its guards in place; the next one keeps
    those of its own VPNs (``kept``, applied before) and removes the others:
    their VPNs are no longer configured or their service sets no longer
    applied.  Rules are compared whole, so a kept plan's preferences lose
    what its predecessor had there and it has not (an edited service
    filter must not keep skipping what it now services).  Only our own
    (protocol ``ROUTE_PROTOCOL``, numbered range) is touched.
    """
    kept = tuple(kept)
    rules_kept = {(command.family, command.delete) for plan in kept for command in plan.guard}
    tables_kept = {table for plan in kept for table in plan.tables}
    preferences = range(FIRST_NUMBERED, FIRST_NUMBERED + PLAN_PREFERENCES * NUMBERED_PLANS)
    tables = range(FIRST_NUMBERED, FIRST_NUMBERED + 2 * NUMBERED_PLANS)
    where = ("-n", namespace) if namespace is not None else ()
    deleted = []
    for family in (4, 6):
        ip = ("ip", *where, f"-{family}")
        rules = json.loads(runner((*ip, "-j", "rule", "show")) or "[]")
        for rule in rules:
            if rule.get("protocol") == str(ROUTE_PROTOCOL) and rule.get("priority") in preferences:
                delete = _deletion(rule)
                if (family, delete) not in rules_kept:
                    runner((*ip, *delete))
                    deleted.append(f"IPv{family} rule {' '.join(delete[3:-2])}")
        routes = json.loads(runner((*ip, "-j", "route", "show", "table", "all", "proto", str(ROUTE_PROTOCOL))) or "[]")
        for table in sorted({int(r["table"]) for r in routes if r.get("table", "").isdigit()}):
            if table in tables and table not in tables_kept:
                runner((*ip, "route", "flush", "table", str(table), "proto", str(ROUTE_PROTOCOL)))
                deleted.append(f"IPv{family} table {table}")
    return deleted


def _deletion(rule: dict[str, Any]) -> tuple[str, ...]:
    """The ``rule del`` arguments of a rule ``ip -j rule show`` lists, as a plan writes those of its rules."""
    args = ["rule", "del", "pref", str(rule["priority"])]
    if "iif" in rule:
        args += ["iif", rule["iif"]]
    for key, word in (("src", "from"), ("dst", "to")):
        if rule.get(key, "all") != "all":
            address = ip_address(rule[key])
            args += [word, f"{address}/{rule.get(f'{key}len', address.max_prefixlen)}"]
    if "ipproto" in rule:
        args += ["ipproto", _protocol_number(rule["ipproto"])]
    for word in ("sport", "dport"):
        if word in rule:
            args += [word, str(rule[word])]
        elif f"{word}_start" in rule:
            args += [word, f"{rule[f'{word}_start']}-{rule[f'{word}_end']}"]
    return (*args, "lookup", str(rule.get("table")), "protocol", str(ROUTE_PROTOCOL))


def _protocol_number(name: str) -> str:
    """iproute2 names protocols from /etc/protocols, "ipproto-N" when it has no name; the plans write numbers."""
    if name.startswith("ipproto-"):
        return name.removeprefix("ipproto-")
    try:
        return str(getprotobyname(name))
    except OSError:
        return name
