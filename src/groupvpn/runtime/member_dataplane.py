"""The member daemon's data planes: one per VPN, behind a guard that drops its traffic while none runs.

Every configured VPN first gets its steering's guard (``steering``: the
rules that steer its service set's traffic and the blackholes they lead
to), before the daemon's cores register; a data plane only connects its
TUNs to it.  The guard stays while the VPN is configured, so its traffic
is dropped, never sent in clear, while its data plane starts, stops and
restarts, after its workers died, and after the daemon exits (cleanly or
not: a production router drops a service set's traffic while its IPsec
process is down).  It goes with the VPN: removed from the configuration
or its service set no longer applied, the VPN's traffic is routed as it
comes, as on a router whose service set was deleted.  When the daemon
first configures a namespace it keeps its VPNs' guards (a predecessor's
are adopted) and removes the others there (``remove_leftovers``).  With
``--no-dataplane`` nothing is steered.

A VPN has a ``Dataplane`` while one of the interfaces its service set is
applied to is up (exactly when it registers), in its gateway's routing
instance.  The daemon pokes ``MemberDataplanes`` after every event of its
cores, every link change and every reload; a poke reconciles: data planes
no longer wanted are stopped, guards installed, changed or removed, wanted
data planes started, and each running one gets a new ``PolicyState`` when
its group's snapshot or fail-open state says something else than the last
one did.  A timer at the snapshot's ``valid_until`` covers what changes
without an event (the encryption handover, expiry).

Starting and stopping block (worker processes, ``ip`` commands), so they
run on a thread, one at a time, inside the one reconciling task; the event
loop stays free.  A VPN that cannot have a guard or a data plane (no TUN
device, no LAN interface, no forwarding...) is logged once with the reason
and tried again when one of its interfaces changes or on reload; the
control plane runs on regardless.

A data plane lives as long as its VPN's registration (a changed VPN and
interfaces going down end both), so the workers' counter-mode IV counters
never restart under the same Sender ID.  Its interfaces are those of the
namespace when it starts (the guard follows them then).
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
from ..dataplane.manager import Dataplane, DataplaneDescription, DataplaneError
from ..dataplane.namespace import in_namespace, read_sysctl
from ..dataplane.steering import NUMBERED_PLANS, Steering, SteeringError, SteeringPlan, remove_leftovers, run_ip
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

_FAILURES = (NoDataplane, DataplaneError, SteeringError, ChannelError, OSError, ValueError)
DROPPED = "service-set traffic dropped"


@dataclass(frozen=True)
class DataplaneOptions:
    """``enabled``: False runs the control plane only; ``workers`` per data plane (None: one per CPU);
    ``pin_workers``: worker i runs on CPU i only (a gateway of its own; never when members share CPUs);
    ``offload``: decrypted TCP segments are written to the TUN joined as GSO packets (``dataplane.offload``)."""

    enabled: bool = True
    workers: int | None = None
    pin_workers: bool = False
    offload: bool = False


@dataclass
class _Vpn:
    """A configured VPN's steering (its guard is installed) and its data plane while one runs."""

    settings: VpnSettings
    number: int
    steering: Steering
    plane: Dataplane | None = None
    state: PolicyState | None = None  # the last one handed over to ``plane``
    stopping: str | None = None  # why, while ``plane`` is being stopped

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def traffic(self) -> TrafficSettings:
        return _traffic(self.settings)


def _traffic(settings: VpnSettings) -> TrafficSettings:
    traffic = settings.traffic
    assert isinstance(traffic, TrafficSettings), "the member daemon sets TrafficSettings"
    return traffic


LinkUp = Callable[[str | None, str], bool]  # (routing instance, interface) -> up


class MemberDataplanes:
    """The guards and data planes of the daemon's VPNs; ``configure``, ``poke`` and ``close`` from the event loop."""

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
        self._vpns: dict[str, _Vpn] = {}  # the guarded ones
        self._failed: dict[str, str] = {}  # VPN -> why it has no guard or data plane (until a link change or reload)
        self._swept: set[str | None] = set()  # namespaces whose leftovers are removed
        self._guarded: list[asyncio.Future[None]] = []  # configure calls waiting for the guards
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._not_before = 0.0  # a timer's deadline: snapshots are taken no earlier
        self._closing = False
        self._task = self._loop.create_task(self._reconcile_forever())

    # -- what the daemon calls ------------------------------------------------------------

    async def configure(self, vpns: Iterable[VpnSettings]) -> None:
        """The VPNs from now on (a reload tries failed ones again); returns once their guards are in place."""
        self._wanted = {vpn.name: vpn for vpn in vpns}
        self._failed.clear()
        if not self.options.enabled:
            log.info("data plane disabled (--no-dataplane): the member runs its control plane only")
        guarded = self._loop.create_future()
        self._guarded.append(guarded)
        self.poke()
        await guarded

    def link_changed(self, namespace: str | None, name: str) -> None:
        for vpn in self._wanted.values():
            if vpn.gateway.routing_instance == namespace and name in vpn.interfaces:
                self._failed.pop(vpn.name, None)
        self.poke()

    def poke(self) -> None:
        """Something may have changed (a core's event, a link, the configuration): reconcile soon."""
        self._wake.set()

    async def close(self) -> None:
        """Stop every data plane (after whatever start or stop is under way); the guards stay."""
        self._closing = True
        self.poke()
        await self._task
        if self._timer is not None:
            self._timer.cancel()

    def statistics(self) -> dict[str, dict[str, Any]]:
        """Per VPN: ``data_plane`` (where it stands), ``service_filters``, ``fail_open``, its counters while it runs.

        The counters are ``Dataplane.counters``' (the workers' latest reports).
        """
        report: dict[str, dict[str, Any]] = {}
        for name, settings in self._wanted.items():
            vpn = self._vpns.get(name)
            if vpn is not None and vpn.stopping is not None:
                report[name] = {"data_plane": f"stopping ({vpn.stopping}); {DROPPED}"}
            elif vpn is not None and vpn.plane is not None:
                counters = vpn.plane.counters()
                status = f"running ({counters['workers_running']} of {counters['workers']} workers)"
                fail_open = vpn.state is not None and vpn.state.fail_open
                report[name] = {"data_plane": status, "fail_open": fail_open, **counters}
            elif not self.options.enabled:
                report[name] = {"data_plane": "disabled (--no-dataplane)"}
            else:
                if name in self._failed:
                    status = f"not started: {self._failed[name]}"
                elif not self._up(settings):
                    status = "stopped: its interfaces are down"
                else:
                    status = "starting"
                report[name] = {"data_plane": status + (f"; {DROPPED}" if vpn is not None else "")}
            report[name]["service_filters"] = _traffic(settings).filter_names
        return report

    # -- reconciling ----------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiting, self._guarded = self._guarded, []
            try:
                await self._reconcile(waiting)
            except Exception:  # the daemon must outlive a bug here; its traceback goes to the log
                log.exception("data plane reconciliation failed")
            finally:
                _release(waiting)
            if self._closing and not any(vpn.plane for vpn in self._vpns.values()):
                return  # a pass begun before ``close`` may have started one

    async def _reconcile(self, waiting: list[asyncio.Future[None]]) -> None:
        for vpn in [vpn for vpn in self._vpns.values() if vpn.plane is not None]:
            wanted = self._wanted.get(vpn.name)
            if self._closing:
                await self._stop(vpn, "member stopping")
            elif wanted is None:
                await self._stop(vpn, "removed from the configuration")
            elif wanted != vpn.settings:
                await self._stop(vpn, "configuration changed")
            elif not self._up(wanted):
                await self._stop(vpn, "interfaces down")
        if self._closing:
            return
        await self._guard()
        _release(waiting)
        for vpn in list(self._vpns.values()):
            if vpn.plane is None and vpn.name not in self._failed and self._up(vpn.settings):
                await self._start(vpn)
        self._update()

    def _up(self, settings: VpnSettings) -> bool:
        return any(self._link_up(settings.gateway.routing_instance, name) for name in settings.interfaces)

    # -- guards ---------------------------------------------------------------------------

    async def _guard(self) -> None:
        """Each wanted VPN guarded as its settings say, the others' guards removed, leftovers swept once."""
        wanted = self._wanted if self.options.enabled else {}
        for vpn in [vpn for name, vpn in self._vpns.items() if name not in wanted]:
            await self._unguard(vpn, "removed from the configuration")
        for name, settings in wanted.items():
            vpn = self._vpns.get(name)
            if name in self._failed or (vpn is not None and vpn.settings == settings):
                continue
            try:
                await self._steer(settings, vpn)
            except _FAILURES as problem:
                self._failed[name] = str(problem)
                log.warning("vpn %s: no data plane (%s); the control plane runs without it", name, problem)
                if vpn is not None:
                    await self._unguard(vpn, "its new configuration has none")
        for namespace in {settings.gateway.routing_instance for settings in wanted.values()} - self._swept:
            self._swept.add(namespace)
            kept = [vpn.steering.plan for vpn in self._vpns.values() if vpn.steering.namespace == namespace]
            try:
                swept = await self._loop.run_in_executor(None, remove_leftovers, namespace, kept)
            except (SteeringError, OSError, ValueError) as problem:
                where = _in(namespace)
                log.error("the steering a previous member left%s cannot be read or removed: %s", where, problem)
                continue
            if swept:
                what = ", ".join(dict.fromkeys(swept))
                log.warning("removed the steering a previous member left%s: %s", _in(namespace), what)

    async def _steer(self, settings: VpnSettings, vpn: _Vpn | None) -> None:
        """Guard ``settings``' VPN: a new steering, or ``vpn``'s (its previous settings) changed in place."""
        namespace = settings.gateway.routing_instance
        number = vpn.number if vpn is not None else self._free_number()
        plan = (await self._describe(settings, number)).steering
        self._check_unshared(settings, plan)
        if vpn is not None and vpn.steering.namespace == namespace:
            await self._loop.run_in_executor(None, vpn.steering.change, plan)
            vpn.settings = settings
            return
        steering = Steering(plan, namespace)
        await self._loop.run_in_executor(None, steering.apply)
        if vpn is not None:
            await self._unguard(vpn, "its routing instance changed")
        self._vpns[settings.name] = _Vpn(settings, number, steering)
        interfaces = f"LAN {', '.join(plan.lan)}, WAN {', '.join(plan.wan)}{_in(namespace)}"
        log.info("vpn %s: %s until its data plane runs (%s)", settings.name, DROPPED, interfaces)

    async def _unguard(self, vpn: _Vpn, reason: str) -> None:
        del self._vpns[vpn.name]
        try:
            await self._loop.run_in_executor(None, vpn.steering.remove)
        except SteeringError as problem:
            log.error("vpn %s: steering not fully removed: %s", vpn.name, problem)
        log.warning("vpn %s: steering removed (%s): its traffic is routed as it comes", vpn.name, reason)

    async def _describe(self, settings: VpnSettings, number: int) -> DataplaneDescription:
        """``settings``' data plane with the interfaces its namespace has now."""
        interfaces, ipv6 = await self._loop.run_in_executor(None, read_interfaces, settings.gateway.routing_instance)
        description = describe(number, _traffic(settings), settings.gateway, interfaces, ipv6)
        return replace(description, pin_workers=self.options.pin_workers, offload=self.options.offload)

    def _free_number(self) -> int:
        taken = {vpn.number for vpn in self._vpns.values()}
        free = next((n for n in range(NUMBERED_PLANS) if n not in taken), None)
        if free is None:
            raise NoDataplane(f"{NUMBERED_PLANS} VPNs already have data planes")
        return free

    def _check_unshared(self, settings: VpnSettings, plan: SteeringPlan) -> None:
        """Policy routing steers an interface's traffic into one data plane only."""
        for other in self._vpns.values():
            if other.name == settings.name or other.steering.namespace != settings.gateway.routing_instance:
                continue
            shared = sorted(set(plan.lan + plan.wan) & set(other.steering.plan.lan + other.steering.plan.wan))
            if shared:
                raise NoDataplane(f"interface {', '.join(shared)} is already steered by vpn {other.name}")

    # -- data planes ----------------------------------------------------------------------

    async def _start(self, vpn: _Vpn) -> None:
        settings = vpn.settings
        try:
            description = await self._describe(settings, vpn.number)
            if description.steering != vpn.steering.plan:  # its namespace's interfaces changed
                self._check_unshared(settings, description.steering)
                await self._loop.run_in_executor(None, vpn.steering.change, description.steering)
            plane = Dataplane(vpn.steering.namespace, description, self.options.workers, steering=vpn.steering)
            vpn.state = None
            self._hand_over(vpn, plane, self._snapshot())
            await self._loop.run_in_executor(None, plane.start)
        except _FAILURES as problem:
            self._failed[vpn.name] = str(problem)
            log.warning("vpn %s: no data plane (%s): %s; the control plane runs without it", vpn.name, problem, DROPPED)
            return
        plane.attach(self._loop)
        vpn.plane = plane
        plan = description.steering
        log.info(
            "vpn %s: data plane up%s: %d workers, LAN %s, WAN %s, MTU %d, service filters %s",
            vpn.name,
            _in(vpn.steering.namespace),
            plane.workers,
            ", ".join(plan.lan),
            ", ".join(plan.wan),
            description.mtu,
            vpn.traffic.filter_names,
        )

    async def _stop(self, vpn: _Vpn, reason: str) -> None:
        plane = vpn.plane
        assert plane is not None
        vpn.stopping = reason
        plane.detach()
        try:
            await self._loop.run_in_executor(None, plane.stop)
        except SteeringError as problem:
            log.error("vpn %s: data plane routes not fully removed: %s", vpn.name, problem)
        finally:
            vpn.plane = vpn.stopping = None
        guarded = self._closing or vpn.name in self._wanted
        log.info("vpn %s: data plane stopped (%s)%s", vpn.name, reason, f": {DROPPED}" if guarded else "")

    # -- policies -------------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        return self._sadb.snapshot(max(self._loop.time(), self._not_before))

    def _update(self) -> None:
        """Hand every running data plane its group's policy now, and come back when the snapshot expires."""
        snapshot = self._snapshot()
        running = [vpn for vpn in self._vpns.values() if vpn.plane is not None]
        for vpn in running:
            assert vpn.plane is not None
            try:
                self._hand_over(vpn, vpn.plane, snapshot)
            except (DataplaneError, ValueError) as problem:  # SpdError is a ValueError
                log.error("vpn %s: the data plane keeps its previous policy: %s", vpn.name, problem)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if snapshot.valid_until is not None and running:
            self._timer = self._loop.call_at(snapshot.valid_until, self._deadline, snapshot.valid_until)

    def _deadline(self, when: float) -> None:
        self._timer = None
        self._not_before = when
        self.poke()

    def _hand_over(self, vpn: _Vpn, plane: Dataplane, snapshot: Snapshot) -> None:
        settings = vpn.settings
        group = snapshot.groups.get(settings.group_id)
        registration = self._registration(settings.name)
        fail_open = registration is not None and fail_open_active(registration, group)
        installed = self._sadb.groups.get(settings.group_id)
        version = 1 if vpn.state is None else vpn.state.version + 1
        local = ip_address(settings.gateway.local_address)
        sender_ids = installed.sender_ids if installed is not None else None
        policy = policy_state(version, group, vpn.traffic.df_bit, local, sender_ids, fail_open)
        previous = vpn.state
        if previous is not None and replace(policy.state, version=previous.version) == previous:
            return
        plane.update(policy.state)
        vpn.state = policy.state
        _log_policy(settings.name, policy, previous)


def _release(waiting: list[asyncio.Future[None]]) -> None:
    for future in waiting:
        if not future.done():
            future.set_result(None)


def _in(namespace: str | None) -> str:
    return f" in routing instance {namespace}" if namespace else ""


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
