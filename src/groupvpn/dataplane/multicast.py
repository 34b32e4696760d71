"""IPv4 multicast through the packet path, which policy routing cannot steer.

The kernel never consults the routing rules for an incoming multicast
packet: it delivers it locally if the namespace joined the group and
forwards it only with multicast routing (an MFC entry).  So a LAN host's
multicast never reaches the outbound TUN, the group's multicast ESP never
reaches the inbound TUN, and a packet a worker writes back to a TUN with a
multicast destination would need multicast forwarding again.

Instead, while a data plane is connected:

* ``tc`` clsact ingress filters (u32 + mirred, the classifiers this kernel
  has) redirect each LAN's multicast to the outbound TUN and ESP to a
  multicast group arriving on a WAN to the inbound TUN.  The link-local
  control block 224.0.0.0/24, IGMP and packets with TTL 0 or 1 (which no
  router forwards) stay with the kernel.  At ingress the packet starts at
  its IP header, so the redirect hands the L3 TUN a bare IP packet.
* the workers send multicast results through raw sockets (``IP_HDRINCL``,
  the header as built: preserved addresses, and the TTL the host set, which
  unlike forwarded unicast no member decrements) bound to an interface
  by ``IP_MULTICAST_IF``: what leaves the outbound TUN goes out of the
  first WAN interface, what decrypts goes out of every LAN interface.

The policy decides as for unicast: a multicast destination no rule covers
is dropped, as the kernel without multicast routing would have.  The
filters are installed always (policies change, the filters would not
follow them); while its data plane runs, the member itself no longer
receives routable multicast on its LAN interfaces, nor multicast ESP on its
WAN (the key servers' multicast rekeys are UDP and still arrive).  Carrying the group's
multicast between the members is the WAN's business (its multicast
routing), not the member's.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .namespace import in_namespace
from .steering import IpFailed, Runner, SteeringError, SteeringPlan, run_ip

_CONTROL = (  # left to the kernel: link-local control block, IGMP, TTL 0 or 1
    ("match", "ip", "dst", "224.0.0.0/24"),
    ("match", "ip", "protocol", "2", "0xff"),
    ("match", "u8", "0", "0xfe", "at", "8"),
)
_IP_MREQN = struct.Struct("=4s4si")  # struct ip_mreqn: group, address, interface index


@dataclass(frozen=True)
class TcFilter:
    """One ingress filter: the device, its preference, and the u32 match and action after ``protocol ip``."""

    device: str
    pref: int
    spec: tuple[str, ...]


class MulticastSteering:
    """The ingress filters of one plan's data plane in one namespace: ``connect`` adds, ``disconnect`` deletes.

    Preferences are the plan's rule preferences (unique per VPN): ``priority``
    for the filters that leave control traffic to the kernel (a match without
    action ends the chain and passes), ``priority + 1`` for the redirects.
    ``connect`` first deletes what is at these preferences (a predecessor's
    leftovers), so it is idempotent; ``disconnect`` deletes the preferences
    and each clsact qdisc no filter is left on.
    """

    def __init__(self, plan: SteeringPlan, namespace: str | None = None, *, runner: Runner = run_ip) -> None:
        self.plan = plan
        self.namespace = namespace
        self._run = runner

    @property
    def filters(self) -> tuple[TcFilter, ...]:
        plan, keep, steer = self.plan, self.plan.priority, self.plan.priority + 1
        filters = []
        for device in plan.lan:
            filters += [TcFilter(device, keep, (*match, "flowid", ":1")) for match in _CONTROL]
            redirect = ("match", "ip", "dst", "224.0.0.0/4", "action", "mirred", "egress", "redirect", "dev")
            filters.append(TcFilter(device, steer, (*redirect, plan.outbound_tun)))
        esp = ("match", "ip", "protocol", "50", "0xff", "match", "ip", "dst", "224.0.0.0/4")
        for device in plan.wan:
            action = ("action", "mirred", "egress", "redirect", "dev", plan.inbound_tun)
            filters.append(TcFilter(device, steer, (*esp, *action)))
        return tuple(filters)

    def _tc(self, *args: str) -> str:
        where = ("-n", self.namespace) if self.namespace is not None else ()
        return self._run(("tc", *where, *args))

    def connect(self) -> None:
        """Redirect multicast into the TUNs (they exist); on failure, what was added is deleted again."""
        self.disconnect()
        try:
            for device in dict.fromkeys(f.device for f in self.filters):
                self._tc("qdisc", "replace", "dev", device, "clsact")
            for f in self.filters:
                where = ("dev", f.device, "ingress", "pref", str(f.pref))
                self._tc("filter", "add", *where, "protocol", "ip", "u32", *f.spec)
        except IpFailed:
            self.disconnect()
            raise

    def disconnect(self) -> None:
        """Delete this plan's filters (what is gone is fine) and each clsact qdisc left empty."""
        for device in dict.fromkeys(f.device for f in self.filters):
            for pref in sorted({f.pref for f in self.filters if f.device == device}):
                try:
                    self._tc("filter", "del", "dev", device, "ingress", "pref", str(pref))
                except IpFailed:
                    pass  # never added, or gone with the device
            try:
                shown = (self._tc("filter", "show", "dev", device, side) for side in ("ingress", "egress"))
                if not any(text.strip() for text in shown):
                    self._tc("qdisc", "del", "dev", device, "clsact")
            except IpFailed:
                pass


def open_senders(
    namespace: str | None, wan: str, lan: Sequence[str]
) -> tuple[socket.socket, tuple[socket.socket, ...]]:
    """Raw ``IP_HDRINCL`` sockets in ``namespace``: one out of ``wan``, one out of each ``lan`` interface.

    SteeringError if an interface does not exist (the steering's own check would say the same, later).
    """

    def sender(device: str) -> socket.socket:
        try:
            index = socket.if_nametoindex(device)
        except OSError:
            raise SteeringError(f"there is no interface {device}") from None
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IPPROTO_RAW implies IP_HDRINCL
        try:
            raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _IP_MREQN.pack(bytes(4), bytes(4), index))
            raw.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            raw.setblocking(False)
        except BaseException:
            raw.close()
            raise
        return raw

    def open_all() -> tuple[socket.socket, tuple[socket.socket, ...]]:
        opened: list[socket.socket] = []
        try:
            for device in (wan, *lan):
                opened.append(sender(device))
        except BaseException:
            for raw in opened:
                raw.close()
            raise
        return opened[0], tuple(opened[1:])

    return in_namespace(namespace, open_all)


class MulticastOutput:
    """A worker's way out for multicast: ``to_wan`` what it encrypts or passes, ``to_lan`` what it decrypted."""

    def __init__(self, wan: socket.socket, lan: Sequence[socket.socket]) -> None:
        self.wan = wan
        self.lan = tuple(lan)

    def to_wan(self, packet: bytes) -> None:
        self.wan.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))

    def to_lan(self, packet: bytes) -> None:
        destination = (socket.inet_ntoa(packet[16:20]), 0)
        for raw in self.lan:
            raw.sendto(packet, destination)
