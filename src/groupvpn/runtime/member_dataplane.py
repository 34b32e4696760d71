"""The member daemon's data planes: one per VPN, started with its interfaces and fed from the SA database.

A VPN has a ``Dataplane`` while one of the interfaces its service set is
applied to is up (exactly when it registers), in its gateway's routing
instance.  The daemon pokes ``MemberDataplanes`` after every event of its
cores, every link change and every reload; a poke reconciles: data planes
no longer wanted are stopped, wanted ones are started, and each running
one gets a new ``PolicyState`` when its group's snapshot or fail-open
state says something else than the last one did.  A timer at the
snapshot's ``valid_until`` covers what changes without an event (the
encryption handover, expiry).

Starting and stopping block (worker processes, ``ip`` commands), so they
run on a thread, one at a time, inside the one reconciling task; the event
loop stays free.  A VPN whose data plane cannot start (no TUN device, no
LAN interface, no forwarding...) is logged once with the reason and tried
again when one of its interfaces changes or on reload; the control plane
runs on regardless.

A data plane lives as long as its VPN's registration (a changed VPN and
interfaces going down end both), so the workers' counter-mode IV counters
never restart under the same Sender ID.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from ipaddress import ip_address
from typing import Any

from ..dataplane.channel import ChannelError, PolicyState
from ..dataplane.manager import Dataplane, DataplaneError
from ..dataplane.namespace import in_namespace, read_sysctl
from ..dataplane.steering import SteeringError, run_ip
from ..gm.dataplane_bridge import (
    DataplanePolicy,
    Interface,
    NoDataplane,
    TrafficSettings,
    describe,
    fail_open_active,
    policy_state,
)
from ..gm.member import Registration, VpnSettings
from ..gm.sadb import SaDatabase, Snapshot

log = logging.getLogger("groupvpn.member")

MAX_DATAPLANES = 100  # SteeringPlan.numbered's VPN numbers
_FAILURES = (NoDataplane, DataplaneError, SteeringError, ChannelError, OSError, ValueError)


@dataclass(frozen=True)
class DataplaneOptions:
    """``enabled``: False runs the control plane only; ``workers`` per data plane (None: one per CPU);
    ``pin_workers``: worker i runs on CPU i only (a gateway of its own; never when members share CPUs)."""

    enabled: bool = True
    workers: int | None = None
    pin_workers: bool = False


@dataclass
class _Running:
    settings: VpnSettings
    number: int
    plane: Dataplane
    state: PolicyState | None = None  # the last one handed over
    stopping: str | None = None  # why, while it is being stopped

    @property
    def traffic(self) -> TrafficSettings:
        return _traffic(self.settings)


def _traffic(settings: VpnSettings) -> TrafficSettings:
    traffic = settings.traffic
    assert isinstance(traffic, TrafficSettings), "the member daemon sets TrafficSettings"
    return traffic


LinkUp = Callable[[str | None, str], bool]  # (routing instance, interface) -> up


class MemberDataplanes:
    """The data planes of the daemon's VPNs; ``configure``, ``poke`` and ``close`` from the event loop."""

    def __init__(
        self,
        sadb: SaDatabase,
        registration: Callable[[str], Registration | None],
        link_up: LinkUp,
        options: DataplaneOptions = DataplaneOptions(),
    ) -> None:
        self.options = options
        self._sadb = sadb
        self._registration = registration
        self._link_up = link_up
        self._loop = asyncio.get_running_loop()
        self._wanted: dict[str, VpnSettings] = {}
        self._running: dict[str, _Running] = {}
        self._failed: dict[str, str] = {}  # VPN -> why it has no data plane (until its links change or a reload)
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._not_before = 0.0  # a timer's deadline: snapshots are taken no earlier
        self._closing = False
        self._task = self._loop.create_task(self._reconcile_forever())

    # -- what the daemon calls ------------------------------------------------------------

    def configure(self, vpns: Iterable[VpnSettings]) -> None:
        """The VPNs from now on (a reload tries failed ones again)."""
        self._wanted = {vpn.name: vpn for vpn in vpns}
        self._failed.clear()
        if not self.options.enabled:
            log.info("data plane disabled (--no-dataplane): the member runs its control plane only")
        self.poke()

    def link_changed(self, namespace: str | None, name: str) -> None:
        for vpn in self._wanted.values():
            if vpn.gateway.routing_instance == namespace and name in vpn.interfaces:
                self._failed.pop(vpn.name, None)
        self.poke()

    def poke(self) -> None:
        """Something may have changed (a core's event, a link, the configuration): reconcile soon."""
        self._wake.set()

    async def close(self) -> None:
        """Stop every data plane (after whatever start or stop is under way)."""
        self._closing = True
        self._wanted = {}
        self.poke()
        await self._task
        if self._timer is not None:
            self._timer.cancel()

    def statistics(self) -> dict[str, dict[str, Any]]:
        """Per VPN: ``data_plane`` (where it stands), ``fail_open`` and, while it runs, its counters.

        The counters are ``Dataplane.counters``' (the workers' latest reports).
        """
        report: dict[str, dict[str, Any]] = {}
        for name, settings in self._wanted.items():
            running = self._running.get(name)
            if running is not None and running.stopping is not None:
                report[name] = {"data_plane": f"stopping ({running.stopping})"}
            elif running is not None:
                counters = running.plane.counters()
                status = f"running ({counters['workers_running']} of {counters['workers']} workers)"
                fail_open = running.state is not None and running.state.fail_open
                report[name] = {"data_plane": status, "fail_open": fail_open, **counters}
            elif not self.options.enabled:
                report[name] = {"data_plane": "disabled (--no-dataplane)"}
            elif name in self._failed:
                report[name] = {"data_plane": f"not started: {self._failed[name]}"}
            elif not self._up(settings):
                report[name] = {"data_plane": "stopped: its interfaces are down"}
            else:
                report[name] = {"data_plane": "starting"}
        return report

    # -- reconciling ----------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._reconcile()
            except Exception:  # the daemon must outlive a bug here; its traceback goes to the log
                log.exception("data plane reconciliation failed")
            if self._closing and not self._running:  # a pass begun before ``close`` may have started one
                return

    async def _reconcile(self) -> None:
        for name, running in list(self._running.items()):
            wanted = self._wanted.get(name)
            if wanted is None:
                await self._stop(name, "member stopping" if self._closing else "removed from the configuration")
            elif wanted != running.settings:
                await self._stop(name, "configuration changed")
            elif not self._up(wanted):
                await self._stop(name, "interfaces down")
        for name, settings in self._wanted.items():
            if name not in self._running and name not in self._failed and self.options.enabled and self._up(settings):
                await self._start(settings)
        self._update()

    def _up(self, settings: VpnSettings) -> bool:
        return any(self._link_up(settings.gateway.routing_instance, name) for name in settings.interfaces)

    async def _start(self, settings: VpnSettings) -> None:
        namespace = settings.gateway.routing_instance
        try:
            interfaces, ipv6 = await self._loop.run_in_executor(None, read_interfaces, namespace)
            number = self._free_number()
            description = describe(number, _traffic(settings), settings.gateway, interfaces, ipv6)
            description = replace(description, pin_workers=self.options.pin_workers)
            self._check_unshared(settings, description.steering.lan + description.steering.wan)
            running = _Running(settings, number, Dataplane(namespace, description, self.options.workers))
            self._hand_over(running, self._snapshot())
            await self._loop.run_in_executor(None, running.plane.start)
        except _FAILURES as problem:
            self._failed[settings.name] = str(problem)
            log.warning("vpn %s: no data plane (%s); the control plane runs without it", settings.name, problem)
            return
        running.plane.attach(self._loop)
        self._running[settings.name] = running
        plan = description.steering
        where = f" in routing instance {namespace}" if namespace else ""
        log.info(
            "vpn %s: data plane up%s: %d workers, LAN %s, WAN %s, MTU %d",
            settings.name,
            where,
            running.plane.workers,
            ", ".join(plan.lan),
            ", ".join(plan.wan),
            description.mtu,
        )
        for name in _traffic(settings).unmodelled_filters:
            log.warning(
                "vpn %s: service filter %s is not modelled (the configuration has no firewall filters): "
                "its traffic is not bypassed",
                settings.name,
                name,
            )

    def _free_number(self) -> int:
        taken = {running.number for running in self._running.values()}
        free = next((n for n in range(MAX_DATAPLANES) if n not in taken), None)
        if free is None:
            raise NoDataplane(f"{MAX_DATAPLANES} data planes already run")
        return free

    def _check_unshared(self, settings: VpnSettings, interfaces: tuple[str, ...]) -> None:
        """Policy routing steers an interface's traffic into one data plane only."""
        for other in self._running.values():
            if other.settings.gateway.routing_instance != settings.gateway.routing_instance:
                continue
            plan = other.plane.description.steering
            shared = sorted(set(interfaces) & set(plan.lan + plan.wan))
            if shared:
                raise NoDataplane(f"interface {', '.join(shared)} is already steered by vpn {other.settings.name}")

    async def _stop(self, name: str, reason: str) -> None:
        running = self._running[name]
        running.stopping = reason
        running.plane.detach()
        try:
            await self._loop.run_in_executor(None, running.plane.stop)
        except SteeringError as problem:
            log.error("vpn %s: data plane steering not fully removed: %s", name, problem)
        finally:
            del self._running[name]
        log.info("vpn %s: data plane stopped (%s)", name, reason)

    # -- policies -------------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        return self._sadb.snapshot(max(self._loop.time(), self._not_before))

    def _update(self) -> None:
        """Hand every running data plane its group's policy now, and come back when the snapshot expires."""
        snapshot = self._snapshot()
        for running in self._running.values():
            try:
                self._hand_over(running, snapshot)
            except (DataplaneError, ValueError) as problem:  # SpdError is a ValueError
                log.error("vpn %s: the data plane keeps its previous policy: %s", running.settings.name, problem)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if snapshot.valid_until is not None and self._running:
            self._timer = self._loop.call_at(snapshot.valid_until, self._deadline, snapshot.valid_until)

    def _deadline(self, when: float) -> None:
        self._timer = None
        self._not_before = when
        self.poke()

    def _hand_over(self, running: _Running, snapshot: Snapshot) -> None:
        settings = running.settings
        group = snapshot.groups.get(settings.group_id)
        registration = self._registration(settings.name)
        fail_open = registration is not None and fail_open_active(registration, group)
        installed = self._sadb.groups.get(settings.group_id)
        version = 1 if running.state is None else running.state.version + 1
        local = ip_address(settings.gateway.local_address)
        sender_ids = installed.sender_ids if installed is not None else None
        policy = policy_state(version, group, running.traffic.df_bit, local, sender_ids, fail_open)
        previous = running.state
        if previous is not None and replace(policy.state, version=previous.version) == previous:
            return
        running.plane.update(policy.state)
        running.state = policy.state
        _log_policy(settings.name, policy, previous)


def _log_policy(vpn: str, policy: DataplanePolicy, previous: PolicyState | None) -> None:
    state = policy.state
    spis = ", ".join(f"0x{sa.spi:08x}" for sa in state.sas) or "none"
    encrypting = ", ".join(sorted({f"0x{spi:08x}" for spi in state.encrypting.values()})) or "none"
    log.info(
        "vpn %s: data plane policy %d: %d rules, SAs %s, encrypting with %s",
        vpn,
        state.version,
        len(state.rules),
        spis,
        encrypting,
    )
    if state.fail_open != (previous.fail_open if previous is not None else False):
        if state.fail_open:
            log.warning("vpn %s: no key server answers and the group has no SAs: fail-open rules active", vpn)
        else:
            log.info("vpn %s: fail-open rules inactive", vpn)
    for problem in policy.unusable:
        log.warning("vpn %s: %s", vpn, problem)


def read_interfaces(namespace: str | None) -> tuple[tuple[Interface, ...], bool]:
    """The interfaces of ``namespace`` (None: ours) and whether it forwards IPv6."""
    where = ("-n", namespace) if namespace is not None else ()
    links = json.loads(run_ip(("ip", *where, "-d", "-j", "link", "show")) or "[]")
    interfaces = tuple(
        Interface(
            link["ifname"],
            int(link["mtu"]),
            steerable=link.get("link_type") != "loopback" and link.get("linkinfo", {}).get("info_kind") != "tun",
        )
        for link in links
    )
    return interfaces, in_namespace(namespace, _forwards_ipv6)


def _forwards_ipv6() -> bool:
    try:
        return read_sysctl(("net", "ipv6", "conf", "all", "forwarding")) == 1
    except OSError:  # IPv6 disabled in this kernel or namespace
        return False
