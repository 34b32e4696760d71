"""`groupvpn member`: the member cores on their UDP sockets, link watchers and the control socket.

One ``Member`` core and one UDP socket (port 848) serve each distinct
local address of the configured gateways, inside the gateway's routing
instance (network namespace) when it names one.  The interfaces a VPN's
service set is applied to live in that same namespace, so one
``LinkWatcher`` per namespace reports them to the cores there.  All cores
install into one ``SaDatabase``.  Each registration, failed attempt (with
its reason), server switch and clearing of SAs becomes one log line, as
does each push applied or dropped (with why), SA activated or
deactivated, pull rekey started and removal from a group; keys and
pre-shared keys never do.  ``MemberDataplanes`` runs each VPN's data
plane from that database (unless ``--no-dataplane``), behind a guard that
drops the VPN's traffic from before its core registers until after the
daemon exits.  While a held KEK names a multicast group as its push
destination, the core holding it also reads a socket joined to that group
(``runtime.multicast``); the join and the leave are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..config.model import MemberVpn, load_member
from ..gm.dataplane_bridge import TrafficSettings
from ..gm.member import (
    AttemptFailed,
    Failure,
    GatewaySettings,
    IkeSaDown,
    IkeSaUp,
    Member,
    MemberEvent,
    Registered,
    Registration,
    SaExpired,
    SasCleared,
    ServerSwitched,
    VpnSettings,
    check_vpns,
)
from ..gm.rekey import PullRekeyStarted, PushApplied, PushDropped, Removed, SaActivated, SaDeactivated
from ..gm.sadb import SaDatabase
from ..gm.views import (
    MemberState,
    UnknownGroup,
    ike_security_associations,
    ipsec_security_associations,
    ipsec_statistics,
    kek_security_associations,
    policy,
)
from ..wire.numbers import GDOI_PORT
from .control import ControlError, Request
from .daemon import StartupError, load_config, udp_socket
from .member_dataplane import DataplaneOptions, MemberDataplanes
from .multicast import MulticastGroup, multicast_socket
from .netlink import Link, LinkWatcher
from .udp import UdpDriver

log = logging.getLogger("groupvpn.member")

# Where a core listens: (routing instance, local address).
Binding = tuple[str | None, str]


# -- configuration: the typed model to the cores' settings ---------------------------------


def _settings(vpn: MemberVpn) -> VpnSettings:
    gateway = vpn.gateway
    applied = vpn.service_set.attachments if vpn.service_set is not None else ()
    return VpnSettings(
        vpn.name,
        vpn.group_id,
        GatewaySettings(
            gateway.name,
            tuple(str(s) for s in gateway.servers),
            str(gateway.local_address),
            gateway.policy.psk,
            gateway.policy.suites,
            gateway.routing_instance,
            gateway.server_port,
        ),
        frozenset(a.unit.interface for a in applied),
        traffic=TrafficSettings.of(vpn),
    )


def load(path: Path) -> dict[Binding, tuple[VpnSettings, ...]]:
    """The VPNs of ``path`` by the socket they use.

    Raises ``ConfigError`` (every problem with its position), ``ValueError``
    (VPNs that cannot share a socket) or ``OSError``.
    """
    by_binding: dict[Binding, list[VpnSettings]] = defaultdict(list)
    for vpn in load_member(path.read_text()).vpns:
        settings = _settings(vpn)
        gateway = settings.gateway
        by_binding[(gateway.routing_instance, gateway.local_address)].append(settings)
    for vpns in by_binding.values():
        check_vpns(vpns)
    return {binding: tuple(vpns) for binding, vpns in by_binding.items()}


# -- log lines ------------------------------------------------------------------------------


def describe(event: MemberEvent) -> tuple[int, str]:
    """The log level and line for an event of a core."""
    if isinstance(event, AttemptFailed):
        level = logging.ERROR if event.failure is Failure.POLICY_REJECTED else logging.WARNING
        return level, event.message
    if isinstance(event, ServerSwitched):
        return logging.WARNING, event.message
    if isinstance(event, Removed):
        return logging.ERROR, event.text
    if isinstance(event, PushDropped):  # replays and forgeries among them
        return logging.WARNING, event.text
    if isinstance(event, PushApplied | SaActivated | SaDeactivated | PullRekeyStarted):
        return logging.INFO, event.text
    assert isinstance(event, Registered | SasCleared | IkeSaUp | IkeSaDown | SaExpired)
    return logging.INFO, event.message


# -- the daemon ------------------------------------------------------------------------------


@dataclass
class _Socket:
    """One core on one UDP socket, and the task that logs its events."""

    member: Member
    driver: UdpDriver
    logger: asyncio.Task[None]


class MemberDaemon:
    """A running member; ``start`` builds one, ``daemon.run`` serves it."""

    def __init__(self, config_path: Path, dataplane: DataplaneOptions = DataplaneOptions()) -> None:
        self.config_path = config_path
        self.sadb = SaDatabase()
        self._loop = asyncio.get_running_loop()
        self._sockets: dict[Binding, _Socket] = {}
        self._watchers: dict[str | None, LinkWatcher] = {}
        self._links: dict[str | None, dict[str, bool]] = defaultdict(dict)
        self._reloads: set[asyncio.Task[None]] = set()
        self._multicast: dict[tuple[Binding, MulticastGroup], socket.socket] = {}
        self.dataplanes = MemberDataplanes(
            self.sadb, self._registration, lambda ri, name: self._links[ri].get(name, False), dataplane
        )

    @classmethod
    async def start(cls, config_path: Path, dataplane: DataplaneOptions = DataplaneOptions()) -> MemberDaemon:
        config = load_config(config_path, load)
        daemon = cls(config_path, dataplane)
        try:
            await daemon._apply(config)
        except BaseException:
            await daemon.close()
            raise
        return daemon

    # -- configuration ----------------------------------------------------------------------

    async def _apply(self, config: Mapping[Binding, tuple[VpnSettings, ...]]) -> None:
        """Run exactly the cores ``config`` asks for; existing ones are reconfigured in place.

        The VPNs' guards come first: their traffic is dropped before any core registers.
        """
        await self.dataplanes.configure(vpn for vpns in config.values() for vpn in vpns)
        for binding in [b for b in self._sockets if b not in config]:
            self._sockets[binding].driver.step(partial(self._sockets[binding].member.reconfigure, ()))
            await self._drop(binding)
        for binding, vpns in config.items():
            if binding in self._sockets:
                self._sockets[binding].driver.step(partial(self._sockets[binding].member.reconfigure, vpns))
            else:
                await self._open(binding, vpns)
        for namespace in {ri for ri, _ in config} - set(self._watchers):
            self._watchers[namespace] = await LinkWatcher.open(partial(self._link, namespace), namespace)
        for namespace in set(self._watchers) - {ri for ri, _ in config}:
            self._watchers.pop(namespace).close()
            self._links.pop(namespace, None)
        for binding, vpns in config.items():
            names = ", ".join(f"{v.name} (group {v.group_id})" for v in vpns)
            where = f" in routing instance {binding[0]}" if binding[0] else ""
            log.info("member on UDP %s port %d%s: vpn %s", binding[1], GDOI_PORT, where, names)
            for vpn in vpns:
                if not vpn.interfaces:
                    log.warning("vpn %s: its service set is applied to no interface, so it does not register", vpn.name)

    async def _open(self, binding: Binding, vpns: tuple[VpnSettings, ...]) -> _Socket:
        routing_instance, address = binding
        member = Member(vpns, self.sadb)
        driver = await UdpDriver.open(member, sock=udp_socket((address, GDOI_PORT), routing_instance))
        running = self._sockets[binding] = _Socket(member, driver, asyncio.create_task(self._log_events(driver)))
        for name, up in self._links[routing_instance].items():
            driver.step(partial(member.link_changed, name, up))
        return running

    async def _drop(self, binding: Binding) -> None:
        running = self._sockets.pop(binding)
        await asyncio.sleep(0)  # let the transport send what the last step queued
        running.driver.close()
        running.logger.cancel()
        self._log_pending(running.driver)
        self._sync_multicast()

    def _link(self, namespace: str | None, link: Link) -> None:
        if self._links[namespace].get(link.name) == link.up:
            return
        self._links[namespace][link.name] = link.up
        cores = [running for (ri, _), running in self._sockets.items() if ri == namespace]
        if any(link.name in r.settings.interfaces for c in cores for r in c.member.registrations.values()):
            where = f" in routing instance {namespace}" if namespace else ""
            log.info("interface %s%s is %s", link.name, where, "up" if link.up else "down")
        for running in cores:
            running.driver.step(partial(running.member.link_changed, link.name, link.up))
        self.dataplanes.link_changed(namespace, link.name)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration; an invalid one is logged and the running one kept."""
        task = self._loop.create_task(self._reload_logged())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_logged(self) -> None:
        with contextlib.suppress(ControlError):  # _reload logged why
            await self._reload()

    async def _reload(self) -> list[str]:
        """Apply the configuration file again; ``ControlError`` with every problem if it is invalid."""
        try:
            config = load(self.config_path)
        except (ValueError, OSError) as err:  # ConfigError among them
            log.error("reload of %s refused, still running the previous configuration: %s", self.config_path, err)
            raise ControlError(f"{self.config_path} is invalid; the running configuration stays:\n{err}") from None
        try:
            await self._apply(config)
        except (StartupError, OSError) as err:
            log.error("reload of %s failed: %s", self.config_path, err)
            raise ControlError(f"reload of {self.config_path} failed: {err}") from None
        names = ", ".join(sorted(v.name for vpns in config.values() for v in vpns))
        log.info("configuration reloaded: vpn %s", names)
        return [f"configuration reloaded: vpn {names}"]

    # -- control socket -------------------------------------------------------------------------

    def _registration(self, vpn: str) -> Registration | None:
        return next((r for s in self._sockets.values() if (r := s.member.registrations.get(vpn)) is not None), None)

    def _state(self) -> MemberState:
        now = self._loop.time()
        members = tuple(running.member for running in self._sockets.values())
        return MemberState(members, self.sadb, now, time.time() - now)

    async def handle(self, request: Request) -> Any:
        """``show`` of the member topics, ``clear`` of its IPsec SAs, ``reload``."""
        if request.get("role", "member") != "member":
            raise ControlError("this is the member daemon; server commands go to the key server")
        op, topic, group = request["op"], request.get("topic"), request.get("group")
        if op == "reload":
            return {"title": "Group VPN member", "records": [], "notes": await self._reload()}
        try:
            if op == "clear" and topic == "ipsec-security-associations":
                return self._clear(group)
            if op == "show":
                return self._show(topic, group, bool(request.get("detail")), bool(request.get("show_keys")))
        except UnknownGroup as err:
            raise ControlError(str(err)) from None
        raise ControlError(f"the member has no '{op} {topic}'")

    def _show(self, topic: Any, group: int | None, detail: bool, keys: bool) -> Any:
        state = self._state()
        if topic == "ike-security-associations":
            return ike_security_associations(state, detail)
        if topic == "kek-security-associations":
            return kek_security_associations(state, group, keys, detail)
        if topic == "ipsec-security-associations":
            return ipsec_security_associations(state, group, keys, detail)
        if topic == "policy":
            return policy(state, group)
        if topic == "ipsec-statistics":
            return ipsec_statistics(state, self.dataplanes.statistics(), group, detail)
        raise ControlError(f"the member has no '{topic}' to show")

    def _clear(self, group: int | None) -> Any:
        state = self._state()
        chosen = state.registrations(group)  # UnknownGroup for a group no VPN joins
        for running in self._sockets.values():
            running.driver.step(partial(running.member.clear, group_id=group))
        names = ", ".join(r.settings.name for r in chosen)
        log.info("clear requested: vpn %s register again", names)
        return {"title": "Group VPN member", "records": [], "notes": [f"SAs cleared, registering again: vpn {names}"]}

    # -- shutdown ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Delete the IKE SAs (telling the key servers), close sockets and watchers, stop the data planes.

        The guards stay: the service sets' traffic is dropped until a member runs again.
        """
        for running in self._sockets.values():
            running.driver.step(running.member.close)
        for binding in list(self._sockets):
            await self._drop(binding)
        for watcher in self._watchers.values():
            watcher.close()
        self._watchers.clear()
        await self.dataplanes.close()

    async def _log_events(self, driver: UdpDriver) -> None:
        while True:
            _log(await driver.events.get())
            self.dataplanes.poke()
            self._sync_multicast()

    # -- multicast pushes -------------------------------------------------------------------

    def _sync_multicast(self) -> None:
        """Be joined to exactly the multicast groups the cores' KEKs push to."""
        wanted = {
            (binding, MulticastGroup(address, port))
            for binding, running in self._sockets.items()
            for address, port in running.member.multicast_destinations
            if port
        }
        for key in [k for k in self._multicast if k not in wanted]:
            sock = self._multicast.pop(key)
            self._loop.remove_reader(sock.fileno())
            sock.close()
            log.info("left multicast group %s%s", key[1], _on(key[0]))
        for key in wanted - set(self._multicast):
            (routing_instance, address), group = key
            try:
                sock = multicast_socket(group, address, routing_instance)
            except (OSError, ValueError) as err:
                log.error("cannot join multicast group %s%s, pushes to it are lost: %s", group, _on(key[0]), err)
                continue
            self._multicast[key] = sock
            self._loop.add_reader(sock.fileno(), self._multicast_readable, key[0], sock)
            log.info("joined multicast group %s%s", group, _on(key[0]))

    def _multicast_readable(self, binding: Binding, sock: socket.socket) -> None:
        """Multicast pushes go to the core of ``binding`` like unicast ones; its acks leave its own socket."""
        running = self._sockets[binding]
        while True:
            try:
                data, (host, port, *_) = sock.recvfrom(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            running.driver.step(partial(running.member.receive, data, (host, port)))

    def _log_pending(self, driver: UdpDriver) -> None:
        while not driver.events.empty():
            _log(driver.events.get_nowait())


def _on(binding: Binding) -> str:
    routing_instance, address = binding
    return f" on {address}" + (f" in routing instance {routing_instance}" if routing_instance else "")


def _log(event: MemberEvent) -> None:
    log.log(*describe(event))
