"""Sockets in a routing instance's network namespace (setns on a helper thread)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import uuid

import pytest

from groupvpn.runtime.daemon import udp_socket
from groupvpn.runtime.netns import NamespaceError, socket_in

ADDRESS = "198.18.250.1"

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespace():
    name = f"gvpn-t{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "addr", "add", f"{ADDRESS}/32", "dev", "lo")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def own_namespace() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def test_a_socket_made_in_the_namespace_uses_its_addresses(namespace):
    before = own_namespace()
    with socket_in(namespace, socket.AF_INET, socket.SOCK_DGRAM) as inside:
        inside.bind((ADDRESS, 0))  # the address exists only in the namespace
        assert own_namespace() == before  # the caller never moved
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outside, pytest.raises(OSError) as caught:
        outside.bind((ADDRESS, 0))
    assert caught.value.errno == errno.EADDRNOTAVAIL


def test_the_daemon_listens_inside_the_routing_instance(namespace):
    with udp_socket((ADDRESS, 0), namespace) as listener, socket_in(namespace, socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((ADDRESS, 0))
        peer.sendto(b"hello", listener.getsockname())
        listener.setblocking(True)
        listener.settimeout(5)
        assert listener.recvfrom(100) == (b"hello", peer.getsockname())


def test_a_missing_namespace_says_how_to_create_it():
    name = f"gvpn-absent-{uuid.uuid4().hex[:6]}"
    missing = f"network namespace {name}: cannot open /run/netns/{name}: .*\\(ip netns add {name}\\)"
    with pytest.raises(NamespaceError, match=missing):
        socket_in(name, socket.AF_INET, socket.SOCK_DGRAM)


@pytest.mark.parametrize("name", ["", "a/b", ".."])
def test_namespace_names_are_single_path_components(name):
    with pytest.raises(NamespaceError, match="is not a network namespace name"):
        socket_in(name, socket.AF_INET, socket.SOCK_DGRAM)
