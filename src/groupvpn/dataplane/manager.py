"""The data plane as the member daemon sees it: start, hand over policies, read counters, stop.

``Dataplane`` creates the two TUN devices (one queue per worker), starts
one worker process per CPU on them, and only once every worker is ready
connects the TUNs to the steering (their routes), so no packet is steered
into a TUN nobody reads.  From then on only the workers hold the queues:
a worker that dies takes its queue with it and the kernel moves its flows
to the others; when the last one is gone the devices go too, and the
steering's guard (its tables' blackholes) discards the traffic: the data
plane fails closed.  The member daemon installs that guard before the
data plane starts and keeps it after it stops (``steering.Steering``); a
data plane given no steering installs its own guard and removes it again.
``update`` hands a new ``PolicyState`` to every worker; each swaps it in
whole between two batches.  Reports flow back on the channels: the daemon
either registers them with its event loop (``attach``) or lets
``counters`` pick them up when asked; nothing here ever blocks on a worker
except ``start`` (bounded, before traffic flows) and ``counters(wait=...)``.

IPv4 multicast, which policy routing cannot steer, takes ``tc`` filters
into the TUNs and raw sockets out of them (``multicast``), connected and
disconnected with the TUN routes.

``stop`` disconnects the TUNs first (the guard drops the traffic), then
closes the channels: workers exit on end of file (stragglers are killed
after a grace period) and the devices disappear with them.

A ``Dataplane`` is started once: the workers' IV counters live as long as
it does, and a new one must come with new Sender IDs (a new registration)
for counter-mode SAs.  ``start`` and ``stop`` run ``ip`` and wait for
processes, so a daemon calls them through ``loop.run_in_executor``.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from . import DropReason
from .channel import (
    ChannelError,
    Counter,
    PolicyState,
    Ready,
    Rejected,
    Report,
    ReportRequest,
    WorkerSetup,
    channel_pair,
    encode,
    receive,
    send,
)
from .multicast import MulticastSteering, open_senders
from .spd import FailOpenRule
from .steering import Steering, SteeringError, SteeringPlan, run_ip
from .tun import Tun, TunSettings, open_tun

START_TIMEOUT = 30.0
STOP_GRACE = 5.0
MAX_REJECTIONS = 16  # the most recent ones are kept for the operator


class DataplaneError(RuntimeError):
    """The data plane could not start, or a worker cannot be reached."""


@dataclass(frozen=True)
class DataplaneDescription:
    """One VPN's data plane: its steering, the WAN MTU, the static policy parts and tuning.

    ``icmp_source_v4``/``v6`` is the address ICMP "too big" errors to LAN
    hosts come from; None: the first LAN interface's first address of that
    family when the data plane starts (without one, path MTU discovery
    through the VPN would be a black hole).  ``offload``: the inbound TUN
    takes a batch's decrypted TCP segments joined into GSO packets
    (``dataplane.offload``).
    """

    steering: SteeringPlan
    mtu: int = 1500
    fail_open_rules: tuple[FailOpenRule, ...] = ()
    icmp_source_v4: IPv4Address | None = None
    icmp_source_v6: IPv6Address | None = None
    batch: int = 64
    report_interval: float = 1.0
    txqueuelen: int = 1000
    pin_workers: bool = False
    offload: bool = False

    def __post_init__(self) -> None:
        if self.batch < 1 or self.report_interval <= 0:
            raise DataplaneError(f"batch {self.batch} and report interval {self.report_interval} must be positive")

    def tun(self, name: str, queues: int, vnet_header: bool = False) -> TunSettings:
        return TunSettings(name, queues, self.mtu, self.txqueuelen, 6 in self.steering.families, vnet_header)


class _WorkerHandle:
    __slots__ = ("index", "process", "channel", "report", "answered", "ready", "open")

    def __init__(self, index: int, process: subprocess.Popen[bytes], channel: socket.socket) -> None:
        self.index = index
        self.process = process
        self.channel = channel
        self.report: Report | None = None  # the latest
        self.answered = 0  # the highest ReportRequest serial answered
        self.ready = False
        self.open = True  # the channel has not reached end of file


class Dataplane:
    """The TUNs and worker processes of one VPN in ``namespace`` (None: the caller's), connected to its steering.

    ``workers`` defaults to one per CPU.  ``steering``: the VPN's, for the
    description's plan in ``namespace``, whose guard its owner installs
    before ``start`` and keeps after ``stop``; None: the data plane's own,
    guard installed by ``start`` and removed by ``stop``.
    """

    def __init__(
        self,
        namespace: str | None,
        description: DataplaneDescription,
        workers: int | None = None,
        *,
        steering: Steering | None = None,
    ) -> None:
        self.description = description
        self.namespace = namespace
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        if self.workers < 1:
            raise DataplaneError(f"{self.workers} workers: at least one is needed")
        if steering is not None and (steering.plan, steering.namespace) != (description.steering, namespace):
            raise DataplaneError("the steering given is not the description's plan in this namespace")
        self._own_guard = steering is None
        self.steering = steering if steering is not None else Steering(description.steering, namespace)
        ipv4 = 4 in description.steering.families
        self.multicast = MulticastSteering(description.steering, namespace) if ipv4 else None
        self._senders: list[socket.socket] = []  # the multicast raw sockets, until every worker holds them
        self.rejections: list[Rejected] = []
        self._tuns: list[Tun] = []
        self._handles: list[_WorkerHandle] = []
        self._state: PolicyState | None = None
        self._serial = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """TUNs, then workers (waiting until each is ready), then their routes; on failure everything is undone."""
        if self._started:
            raise DataplaneError("a data plane is started only once")
        self._started = True
        plan = self.description.steering
        try:
            for name, vnet_header in ((plan.outbound_tun, False), (plan.inbound_tun, self.description.offload)):
                self._tuns.append(open_tun(self.description.tun(name, self.workers, vnet_header), self.namespace))
            if self.multicast is not None:
                wan, lan = open_senders(self.namespace, plan.wan[0], plan.lan)
                self._senders = [wan, *lan]
            icmp_sources = self._icmp_sources()
            for index in range(self.workers):
                self._spawn(index, icmp_sources)
            self._await_ready(time.monotonic() + timeout)
            self._release_tuns()
            if self._own_guard:
                self.steering.apply()
            self.steering.connect()
            if self.multicast is not None:
                self.multicast.connect()
        except BaseException:
            self.stop()
            raise

    def _icmp_sources(self) -> tuple[IPv4Address | None, IPv6Address | None]:
        """The configured ICMP sources, else the first LAN interface's first global address of each family."""
        d = self.description
        where = ("-n", self.namespace) if self.namespace is not None else ()
        links = json.loads(run_ip(("ip", *where, "-j", "addr", "show", "dev", d.steering.lan[0])) or "[]")
        found = [
            ip_address(a["local"]) for link in links for a in link.get("addr_info", []) if a.get("scope") == "global"
        ]
        v4 = next((a for a in found if isinstance(a, IPv4Address)), None)
        v6 = next((a for a in found if isinstance(a, IPv6Address)), None)
        return d.icmp_source_v4 or v4, d.icmp_source_v6 or v6

    def _spawn(self, index: int, icmp_sources: tuple[IPv4Address | None, IPv6Address | None]) -> None:
        outbound, inbound = (tun.fds[index] for tun in self._tuns)
        mine, theirs = channel_pair()
        with theirs:
            fds = ("--channel", str(theirs.fileno()), "--outbound", str(outbound), "--inbound", str(inbound))
            senders = [raw.fileno() for raw in self._senders]
            if senders:
                fds += ("--multicast-wan", str(senders[0]), "--multicast-lan", *map(str, senders[1:]))
            process = subprocess.Popen(
                [sys.executable, "-m", "groupvpn.dataplane.worker", *fds],
                pass_fds=(theirs.fileno(), outbound, inbound, *senders),
                stdin=subprocess.DEVNULL,
            )
        self._handles.append(_WorkerHandle(index, process, mine))
        cpus = sorted(os.sched_getaffinity(0))
        d = self.description
        setup = WorkerSetup(
            index=index,
            workers=self.workers,
            mtu=d.mtu,
            bypass=d.steering.spd_bypass,
            fail_open_rules=d.fail_open_rules,
            icmp_source_v4=icmp_sources[0],
            icmp_source_v6=icmp_sources[1],
            batch=d.batch,
            report_interval=d.report_interval,
            cpu=cpus[index % len(cpus)] if d.pin_workers else None,
            offload=d.offload,
        )
        self._send(self._handles[-1], encode(setup))
        if self._state is not None:
            self._send(self._handles[-1], encode(self._state))

    def _await_ready(self, deadline: float) -> None:
        while not all(handle.ready for handle in self._handles):
            for handle in self._handles:
                if handle.process.poll() is not None:
                    status = handle.process.returncode
                    raise DataplaneError(f"worker {handle.index} exited with status {status} while starting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DataplaneError("workers did not become ready in time")
            select.select([h.channel for h in self._handles if not h.ready], [], [], min(remaining, 0.1))
            self._collect()

    def stop(self) -> None:
        """TUN routes out (and an own guard), workers ended, TUNs closed; safe to repeat and after a failed start."""
        self.detach()
        problem: SteeringError | None = None
        try:
            if self.multicast is not None:
                self.multicast.disconnect()
            if self._own_guard:
                self.steering.remove()  # the TUN routes with the rest
            else:
                self.steering.disconnect()
        except SteeringError as failed:
            problem = failed
        for handle in self._handles:
            handle.channel.close()
        deadline = time.monotonic() + STOP_GRACE
        for handle in self._handles:
            try:
                handle.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                handle.process.kill()
                handle.process.wait()
        self._handles = []
        self._release_tuns()
        if problem is not None:
            raise problem

    def _release_tuns(self) -> None:
        for tun in self._tuns:
            tun.close()
        self._tuns = []
        for raw in self._senders:
            raw.close()
        self._senders = []

    # -- policy -------------------------------------------------------------------------

    def update(self, state: PolicyState) -> None:
        """Make ``state`` the policy of every running worker (each swaps it in whole); before ``start``, of all."""
        self._state = state
        data = encode(state)
        self._collect()  # notice workers that have exited
        for handle in self._handles:
            if handle.open:
                self._send(handle, data)

    def _send(self, handle: _WorkerHandle, data: bytes) -> None:
        if not self._try_send(handle, data):
            raise DataplaneError(f"worker {handle.index} is not reading its channel (status {handle.process.poll()})")

    @staticmethod
    def _try_send(handle: _WorkerHandle, data: bytes) -> bool:
        try:
            return send(handle.channel, data)
        except ChannelError:
            return False

    # -- reports ------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read reports as they come, from ``loop`` (the daemon's); ``counters`` then never has to wait."""
        self.detach()
        self._loop = loop
        for handle in self._handles:
            if handle.open:
                loop.add_reader(handle.channel.fileno(), self._collect_one, handle)

    def detach(self) -> None:
        if self._loop is not None:
            for handle in self._handles:
                if handle.open:
                    self._loop.remove_reader(handle.channel.fileno())
            self._loop = None

    def _collect(self) -> None:
        for handle in self._handles:
            self._collect_one(handle)

    def _collect_one(self, handle: _WorkerHandle) -> None:
        while handle.open:
            try:
                message = receive(handle.channel)
            except EOFError:
                handle.open = False
                if self._loop is not None:
                    self._loop.remove_reader(handle.channel.fileno())
                return
            if message is None:
                return
            if isinstance(message, Report):
                handle.report = message
                handle.answered = max(handle.answered, message.serial)
            elif isinstance(message, Ready):
                handle.ready = True
            elif isinstance(message, Rejected):
                self.rejections = [*self.rejections, message][-MAX_REJECTIONS:]

    def counters(self, wait: float = 0.0) -> dict[str, object]:
        """Totals over all workers; with ``wait`` > 0 each running worker is asked for a fresh report first.

        Keys: ``workers``, ``workers_running``, ``policy_version`` (the
        oldest version any worker runs; -1 before the first), one key per
        ``Counter`` (lower case), ``dropped_packets`` and ``drops`` (non-zero
        counts by drop reason), ``rejected_updates``.
        """
        if wait > 0:
            self._refresh(time.monotonic() + wait)
        else:
            self._collect()
        reports = [h.report for h in self._handles if h.report is not None]
        totals = [sum(column) for column in zip(*(r.counters for r in reports))] or [0] * len(Counter)
        drops = [sum(column) for column in zip(*(r.drops for r in reports))] or [0] * len(DropReason)
        result: dict[str, object] = {
            "workers": len(self._handles),
            "workers_running": self.workers_running,
            "policy_version": min((r.version for r in reports), default=-1),
        }
        result.update({counter.name.lower(): totals[counter] for counter in Counter})
        result["dropped_packets"] = sum(drops)
        result["drops"] = {reason.name.lower(): count for reason, count in zip(DropReason, drops) if count}
        result["rejected_updates"] = len(self.rejections)
        return result

    def _refresh(self, deadline: float) -> None:
        self._serial += 1
        serial = self._serial
        request = encode(ReportRequest(serial))
        asked = [h for h in self._handles if h.open and self._try_send(h, request)]
        while True:
            self._collect()
            waiting = [h for h in asked if h.open and h.answered < serial]
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                return
            select.select([h.channel for h in waiting], [], [], remaining)

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return tuple(h.process.pid for h in self._handles)

    @property
    def workers_running(self) -> int:
        return sum(1 for h in self._handles if h.process.poll() is None)

    def __repr__(self) -> str:
        plan = self.description.steering
        return f"Dataplane({plan.outbound_tun}/{plan.inbound_tun}, workers={self.workers})"

