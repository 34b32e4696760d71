"""Receive-only UDP sockets joined to a multicast group: where multicast GROUPKEY-PUSH messages arrive.

A key server that pushes to a multicast group names it (address and
port) as its SA KEK's destination (RFC 6407 §5.3).  A member joins that
group on the interface holding its gateway's local address -- the one
facing the key server -- inside the gateway's routing instance, and binds
the socket to the group address and port so that no other traffic
reaches it.  Sends (acknowledgements) leave through the member's unicast
socket, never this one.

The interface is found by its address with an rtnetlink address dump
(RTM_GETADDR); the structures are Linux ABI (linux/if_addr.h), so they
live here beside ``netlink``'s.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from .netlink import NLMSG_ERROR_CODE, NLMSG_HEADER, RECEIVE_SIZE, RTATTR, MessageFlags, MessageType, NetlinkError
from .netns import socket_in

IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
RTM_NEWADDR = 20
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
IP_MULTICAST_ALL = 49  # linux/in.h and linux/in6.h; not in Python's socket module
IPV6_MULTICAST_ALL = 29
LINK_LOCAL_SCOPE = 2  # RFC 4291 §2.7: the scope nibble of ff02::/16


@dataclass(frozen=True, slots=True)
class MulticastGroup:
    """A multicast rekey destination: group address and UDP port."""

    address: IPv4Address | IPv6Address
    port: int

    def __post_init__(self) -> None:
        if not self.address.is_multicast:
            raise ValueError(f"{self.address} is not a multicast address")
        if not 0 < self.port <= 0xFFFF:
            raise ValueError(f"UDP port {self.port} is out of range")

    def __str__(self) -> str:
        return f"{self.address} port {self.port}"


def _netlink(routing_instance: str | None) -> socket.socket:
    if routing_instance is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    return socket_in(routing_instance, socket.AF_NETLINK, socket.SOCK_RAW)  # protocol 0 is NETLINK_ROUTE


def _addresses(data: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    """The (interface index, address) pairs of one dump datagram, and whether the dump ended."""
    found: list[tuple[int, bytes]] = []
    pos = 0
    while pos + NLMSG_HEADER.size <= len(data):
        length, kind, _flags, _sequence, _port = NLMSG_HEADER.unpack_from(data, pos)
        if length < NLMSG_HEADER.size or pos + length > len(data):
            raise NetlinkError(errno.EBADMSG, f"netlink message of length {length} at offset {pos} overruns the datagram")
        body = data[pos + NLMSG_HEADER.size : pos + length]
        pos += (length + 3) & ~3
        if kind == MessageType.NLMSG_DONE:
            return found, True
        if kind == MessageType.NLMSG_ERROR and (code := NLMSG_ERROR_CODE.unpack_from(body)[0]):
            raise NetlinkError(-code, "rtnetlink address dump refused")
        if kind != RTM_NEWADDR or len(body) < IFADDRMSG.size:
            continue
        index = IFADDRMSG.unpack_from(body)[4]
        at = IFADDRMSG.size
        while at + RTATTR.size <= len(body):
            size, attribute = RTATTR.unpack_from(body, at)
            if size < RTATTR.size:
                raise NetlinkError(errno.EBADMSG, f"address attribute of length {size} at offset {at}")
            if attribute in (IFA_ADDRESS, IFA_LOCAL):
                found.append((index, body[at + RTATTR.size : at + size]))
            at += (size + 3) & ~3
    return found, False


def interface_index(local: IPv4Address | IPv6Address, routing_instance: str | None = None) -> int:
    """The index of the interface holding ``local`` in the routing instance's namespace."""
    family = socket.AF_INET6 if local.version == 6 else socket.AF_INET
    body = IFADDRMSG.pack(family, 0, 0, 0, 0)
    flags = MessageFlags.NLM_F_REQUEST | MessageFlags.NLM_F_DUMP
    request = NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), RTM_GETADDR, flags, 1, 0) + body
    with _netlink(routing_instance) as sock:
        sock.settimeout(5.0)  # the kernel answers a dump at once; this only bounds a broken one
        sock.send(request)
        done = False
        while not done:
            pairs, done = _addresses(sock.recv(RECEIVE_SIZE))
            for index, packed in pairs:
                if packed == local.packed:
                    return index
    where = f" in routing instance {routing_instance}" if routing_instance else ""
    raise OSError(errno.EADDRNOTAVAIL, f"no interface holds {local}{where}")


def multicast_socket(group: MulticastGroup, local_address: str, routing_instance: str | None = None) -> socket.socket:
    """A non-blocking UDP socket bound to ``group`` and joined to it on the interface holding ``local_address``.

    ``SO_REUSEADDR`` lets several member cores of one namespace join the
    same group; each gets its copy of every datagram.
    """
    local = ip_address(local_address)
    if local.version != group.address.version:
        raise ValueError(f"cannot join {group.address} from {local}: address families differ")
    index = interface_index(local, routing_instance)
    family = socket.AF_INET6 if local.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM) if routing_instance is None else socket_in(
        routing_instance, family, socket.SOCK_DGRAM
    )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
            scope = index if group.address.packed[1] & 0x0F == LINK_LOCAL_SCOPE else 0
            sock.bind((str(group.address), group.port, 0, scope))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group.address.packed + struct.pack("@I", index))
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            sock.bind((str(group.address), group.port))
            mreqn = group.address.packed + local.packed + struct.pack("@i", index)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
