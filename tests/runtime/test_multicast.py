"""Multicast receive sockets between two namespaces on one veth (198.18.0.0/15, 239.192.0.0/14, no route out)."""

from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import subprocess
import uuid
from collections.abc import Iterator
from ipaddress import ip_address

import pytest

from groupvpn.runtime.multicast import MulticastGroup, interface_index, multicast_socket
from groupvpn.runtime.netns import socket_in

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
]

SENDER = {4: "198.18.7.1", 6: "2001:2:0:7::1"}
MEMBER = {4: "198.18.7.2", 6: "2001:2:0:7::2"}
GROUP = {4: "239.192.7.1", 6: "ff15::7:1"}
OTHER_GROUP = {4: "239.192.7.2", 6: "ff15::7:2"}
PORT = 8848


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Namespaces (sender, member) joined by a veth, both families addressed (IPv6 without DAD)."""
    tag = f"gvm{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
    names = (f"{tag}-s", f"{tag}-m")
    made: list[str] = []
    try:
        for name in names:
            ip("netns", "add", name)
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", names[0], "link", "add", "wan", "type", "veth", "peer", "name", "wan", "netns", names[1])
        for name, addresses in zip(names, (SENDER, MEMBER)):
            ip("-n", name, "addr", "add", f"{addresses[4]}/24", "dev", "wan")
            ip("-n", name, "addr", "add", f"{addresses[6]}/64", "dev", "wan", "nodad")
            ip("-n", name, "link", "set", "wan", "up")
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def send(namespace: str, version: int, destination: str, payload: bytes) -> None:
    """One datagram from the sender's ``wan`` (multicast leaves by interface, as there is no route)."""
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    with socket_in(namespace, family, socket.SOCK_DGRAM) as sock:
        if version == 6:
            index = interface_index(ip_address(SENDER[6]), namespace)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, struct.pack("@I", index))
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(SENDER[4]))
        sock.sendto(payload, (destination, PORT))


def settled(sender: str, version: int, sock: socket.socket) -> None:
    """Wait (bounded) until a fresh link carries multicast: the first IPv6 ones are held for about a second."""
    for _ in range(50):
        send(sender, version, GROUP[version], b"probe")
        if select.select([sock], [], [], 0.1)[0]:
            received(sock, 0.3)  # the held probes, arriving together
            return
    raise AssertionError("the veth never carried a multicast datagram")


def received(sock: socket.socket, timeout: float) -> list[bytes]:
    """Every datagram that arrives within ``timeout`` seconds of quiet."""
    got = []
    while select.select([sock], [], [], timeout)[0]:
        got.append(sock.recv(2048))
    return got


@pytest.mark.parametrize("version", [4, 6])
def test_the_joined_socket_receives_its_group_and_nothing_else(pair: tuple[str, str], version: int) -> None:
    sender, member = pair
    joined = multicast_socket(MulticastGroup(ip_address(GROUP[version]), PORT), MEMBER[version], member)
    other = multicast_socket(MulticastGroup(ip_address(OTHER_GROUP[version]), PORT), MEMBER[version], member)
    with joined, other:
        assert joined.getsockname()[:2] == (GROUP[version], PORT)
        settled(sender, version, joined)
        received(other, 0.0)
        send(sender, version, GROUP[version], b"push 1")
        send(sender, version, MEMBER[version], b"unicast")  # same port, the member's own address
        send(sender, version, OTHER_GROUP[version], b"push for the other group")
        send(sender, version, GROUP[version], b"push 2")
        assert received(joined, 1.0) == [b"push 1", b"push 2"]
        assert received(other, 0.2) == [b"push for the other group"]


def test_two_sockets_of_one_namespace_each_get_a_copy(pair: tuple[str, str]) -> None:
    sender, member = pair
    group = MulticastGroup(ip_address(GROUP[4]), PORT)
    first, second = (multicast_socket(group, MEMBER[4], member) for _ in range(2))
    with first, second:
        settled(sender, 4, first)
        received(second, 0.0)
        send(sender, 4, GROUP[4], b"push")
        assert received(first, 1.0) == [b"push"]
        assert received(second, 0.2) == [b"push"]


def test_after_leaving_nothing_arrives(pair: tuple[str, str]) -> None:
    sender, member = pair
    group = MulticastGroup(ip_address(GROUP[4]), PORT)
    with multicast_socket(group, MEMBER[4], member) as joined:
        settled(sender, 4, joined)
    with socket_in(member, socket.AF_INET, socket.SOCK_DGRAM) as unjoined:
        unjoined.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        unjoined.setsockopt(socket.IPPROTO_IP, 49, 0)  # IP_MULTICAST_ALL off, as the joined socket has it
        unjoined.bind((GROUP[4], PORT))
        send(sender, 4, GROUP[4], b"push")
        assert received(unjoined, 0.5) == []


def test_the_interface_is_the_one_holding_the_local_address(pair: tuple[str, str]) -> None:
    _, member = pair
    wan = interface_index(ip_address(MEMBER[4]), member)
    assert wan == interface_index(ip_address(MEMBER[6]), member) != interface_index(ip_address("127.0.0.1"), member)
    with pytest.raises(OSError, match=f"no interface holds 198.18.7.9 in routing instance {member}"):
        multicast_socket(MulticastGroup(ip_address(GROUP[4]), PORT), "198.18.7.9", member)


def test_a_group_is_a_multicast_address_of_the_local_family() -> None:
    with pytest.raises(ValueError, match="not a multicast address"):
        MulticastGroup(ip_address("198.18.7.1"), PORT)
    with pytest.raises(ValueError, match="address families differ"):
        multicast_socket(MulticastGroup(ip_address(GROUP[6]), PORT), MEMBER[4])
