"""TUN devices for the packet path: raw IP packets, one non-blocking fd per queue.

The device is created by opening ``/dev/net/tun`` inside the member's
network namespace (``IFF_TUN | IFF_NO_PI``: every read and write is one
bare IPv4/IPv6 packet).  With more than one queue it is ``IFF_MULTI_QUEUE``
and the kernel spreads flows over the queues by flow hash, so each worker
process owns one fd and a flow always meets the same worker
(lab-notes/perf-baseline.md §3c).  With ``vnet_header`` it is also
``IFF_VNET_HDR``: every read and write starts with a ``virtio_net_hdr``
(``offload``), so a write can be a GSO packet; no offloads are offered
for reads (``TUNSETOFFLOAD`` 0), so the kernel still hands out whole
packets with complete checksums.  The device lives exactly as long as one
of its fds is open: closing them removes it, with every route through it.

Configured once at creation, in the same namespace thread:

* MTU and transmit queue length (bursts are lost at the TUN queue first);
* no reverse-path filtering: packets written back carry other hosts'
  preserved addresses, and even loose filtering drops everything arriving
  on a device without an address (the kernel's "last resort"), so
  ``rp_filter`` is 0 on the TUN and must be 0 for ``all`` (which overrides
  it upwards);
* local source addresses accepted: the ICMP errors the workers write back
  to LAN hosts come from the member's own LAN address;
* IPv4 forwarding: written-back packets are forwarded by the kernel with
  the TUN as input device (IPv6 packets are forwarded by the namespace's
  ``all`` setting, whatever the input device's);
* with IPv6: no link-local address, not a router on the device (which
  would join the all-routers group) and MLDv1 (whose reports, unlike
  MLDv2's, are not queued while the device is down and sent when it comes
  up), so the kernel sends no router solicitations or MLD reports of its
  own into the packet path, where each would count as a drop; without
  IPv6, IPv6 is disabled on the device;
* then up.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from dataclasses import dataclass

from .namespace import in_namespace, read_sysctl, write_sysctl

TUN_PATH = "/dev/net/tun"
IFNAME_MAX = 15  # IFNAMSIZ - 1
MAX_QUEUES = 256  # the kernel's MAX_TAP_QUEUES

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
IFF_UP = 0x0001
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFMTU = 0x8922
SIOCSIFTXQLEN = 0x8943
ADDR_GEN_MODE_NONE = 1

_IFREQ_FLAGS = struct.Struct("16sH22x")  # struct ifreq with ifr_flags
_IFREQ_INT = struct.Struct("16si20x")  # struct ifreq with ifr_mtu / ifr_qlen


class TunError(OSError):
    """The TUN device could not be created or configured."""


def valid_ifname(name: str) -> bool:
    """Whether Linux accepts ``name`` as an interface name (1 to 15 octets, no '/' or white space)."""
    if not 0 < len(name.encode()) <= IFNAME_MAX or name in (".", ".."):
        return False
    return "/" not in name and not any(c.isspace() for c in name)


@dataclass(frozen=True)
class TunSettings:
    """How a TUN device is created: its name, queues (one per worker), link settings, virtio_net_hdr or not."""

    name: str
    queues: int = 1
    mtu: int = 1500
    txqueuelen: int = 1000
    ipv6: bool = False
    vnet_header: bool = False

    def __post_init__(self) -> None:
        if not valid_ifname(self.name):
            raise TunError(f"{self.name!r} is not a Linux interface name")
        if not 1 <= self.queues <= MAX_QUEUES:
            raise TunError(f"TUN {self.name}: {self.queues} queues; 1 to {MAX_QUEUES} are possible")
        if not 68 <= self.mtu <= 65535:
            raise TunError(f"TUN {self.name}: MTU {self.mtu} is outside 68-65535")
        if self.txqueuelen < 1:
            raise TunError(f"TUN {self.name}: transmit queue length must be positive")


class Tun:
    """An open TUN device: its name and one fd per queue (non-blocking, close-on-exec)."""

    def __init__(self, name: str, fds: tuple[int, ...]) -> None:
        self.name = name
        self.fds = fds

    def close(self) -> None:
        """Close every queue; the device and its routes disappear with the last one."""
        fds, self.fds = self.fds, ()
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> Tun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tun({self.name!r}, queues={len(self.fds)})"


def open_tun(settings: TunSettings, namespace: str | None = None) -> Tun:
    """Create the TUN device ``settings`` describes inside ``namespace`` (None: the caller's), configured and up."""
    return in_namespace(namespace, lambda: _create(settings))


def _create(settings: TunSettings) -> Tun:
    name = settings.name
    try:
        socket.if_nametoindex(name)
    except OSError:
        pass
    else:
        raise TunError(f"an interface named {name} already exists")
    flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if settings.queues > 1 else 0)
    flags |= IFF_VNET_HDR if settings.vnet_header else 0
    request = _IFREQ_FLAGS.pack(name.encode(), flags)
    fds: list[int] = []
    try:
        for _ in range(settings.queues):
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, request)
            if settings.vnet_header:
                fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
        _configure(settings)
    except OSError as err:
        for fd in fds:
            os.close(fd)
        raise TunError(f"TUN {name}: {err.strerror or err}") from err
    return Tun(name, tuple(fds))


def _configure(settings: TunSettings) -> None:
    name = settings.name
    conf4 = ("net", "ipv4", "conf", name)
    if read_sysctl(("net", "ipv4", "conf", "all", "rp_filter")):
        raise TunError(
            "net.ipv4.conf.all.rp_filter is on; packets written back to the TUN carry other hosts' "
            "addresses and would be dropped (set it to 0 in this namespace)"
        )
    write_sysctl((*conf4, "rp_filter"), 0)
    write_sysctl((*conf4, "accept_local"), 1)
    write_sysctl((*conf4, "forwarding"), 1)
    conf6 = ("net", "ipv6", "conf", name)
    if settings.ipv6:
        write_sysctl((*conf6, "addr_gen_mode"), ADDR_GEN_MODE_NONE)
        write_sysctl((*conf6, "force_mld_version"), 1)  # before leaving all-routers: no MLDv2 leave report
        write_sysctl((*conf6, "forwarding"), 0)
    elif os.path.isdir("/proc/sys/net/ipv6"):
        write_sysctl((*conf6, "disable_ipv6"), 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
        key = name.encode()
        fcntl.ioctl(control, SIOCSIFMTU, _IFREQ_INT.pack(key, settings.mtu))
        fcntl.ioctl(control, SIOCSIFTXQLEN, _IFREQ_INT.pack(key, settings.txqueuelen))
        _, current = _IFREQ_FLAGS.unpack(fcntl.ioctl(control, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(key, 0)))
        fcntl.ioctl(control, SIOCSIFFLAGS, _IFREQ_FLAGS.pack(key, current | IFF_UP))
