"""TUN devices made inside a network namespace: settings, queues, packets both ways, gone when closed."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

import dpkt
import pytest
from dataplane_packets import rfc1071, tcp, udp

from groupvpn.dataplane.namespace import NamespaceError, in_namespace
from groupvpn.dataplane.offload import PLAIN, PLAIN_READS, VNET_HEADER_SIZE, Coalescer
from groupvpn.dataplane.tun import TunError, TunSettings, open_tun

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or not os.path.exists("/dev/net/tun"),
        reason="needs root, iproute2 and /dev/net/tun",
    ),
]

LOCAL = "198.18.250.1"  # on the namespace's loopback
BEYOND = "198.18.251.0/24"  # routed into the TUN


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10).stdout


def sysctl(namespace: str, key: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "sysctl", "-n", key], check=True, capture_output=True, text=True, timeout=10
    ).stdout.strip()


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"gvtun{os.getpid() % 10000}-{uuid.uuid4().hex[:6]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "dev", "lo", "up")
        ip("-n", name, "addr", "add", f"{LOCAL}/32", "dev", "lo")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def test_the_device_is_made_and_configured_in_the_namespace(namespace: str) -> None:
    with open_tun(TunSettings("gvt0", queues=2, mtu=1400, txqueuelen=2000), namespace) as tun:
        assert len(tun.fds) == 2
        (link,) = json.loads(ip("-n", namespace, "-j", "-d", "link", "show", "dev", "gvt0"))
        info = link["linkinfo"]["info_data"]
        assert (info["type"], info["pi"], info["multi_queue"], info["numqueues"]) == ("tun", False, True, 2)
        assert (link["mtu"], link["txqlen"], "UP" in link["flags"]) == (1400, 2000, True)
        conf = "net.ipv4.conf.gvt0."
        assert [sysctl(namespace, conf + key) for key in ("rp_filter", "accept_local", "forwarding")] == ["0", "1", "1"]
        assert sysctl(namespace, "net.ipv6.conf.gvt0.disable_ipv6") == "1"
        assert "gvt0" not in ip("link", "show")  # nothing in the caller's namespace
    assert "gvt0" not in ip("-n", namespace, "link", "show")  # closing the fds removed it


def test_packets_routed_into_the_device_are_read_and_written_packets_are_delivered(namespace: str) -> None:
    with open_tun(TunSettings("gvt1", queues=2), namespace) as tun:
        ip("-n", namespace, "route", "add", BEYOND, "dev", "gvt1")
        sender = in_namespace(namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        receiver = in_namespace(namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        with sender, receiver:
            sender.bind((LOCAL, 4000))
            sender.sendto(b"into the tun", ("198.18.251.7", 5000))
            ready, _, _ = select.select(list(tun.fds), [], [], 5)
            assert ready, "nothing arrived on any queue"
            packet = os.read(ready[0], 2000)
            assert packet[9] == 17 and packet[16:20] == socket.inet_aton("198.18.251.7")
            assert packet.endswith(b"into the tun")

            receiver.bind((LOCAL, 6000))
            receiver.settimeout(5)
            os.write(tun.fds[1], udp("198.18.251.7", LOCAL, b"out of the tun", sport=5000, dport=6000))
            assert receiver.recvfrom(100) == (b"out of the tun", ("198.18.251.7", 5000))


def read_one(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], 5)
    assert ready, "nothing arrived"
    return os.read(fd, 70000)


def rx_packets(namespace: str, device: str) -> int:
    (link,) = json.loads(ip("-n", namespace, "-s", "-j", "link", "show", "dev", device))
    return int(link["stats64"]["rx"]["packets"])


@pytest.mark.parametrize(
    ("local", "client", "beyond"),
    [(LOCAL, "198.18.251.7", BEYOND), ("2001:2::fa:1", "2001:2::fb:7", "2001:2::fb:0/112")],
    ids=["ipv4", "ipv6"],
)
def test_a_vnet_header_device_takes_a_run_of_tcp_segments_in_one_gso_write(
    namespace: str, local: str, client: str, beyond: str
) -> None:
    """A hand-made TCP client behind the TUN talks to a socket in the namespace; its data goes in one write."""
    port, v6 = 5201, ":" in local
    if v6:
        ip("-n", namespace, "addr", "add", f"{local}/128", "dev", "lo")
    with open_tun(TunSettings("gvt7", vnet_header=True, ipv6=v6), namespace) as tun:
        (link,) = json.loads(ip("-n", namespace, "-j", "-d", "link", "show", "dev", "gvt7"))
        assert link["linkinfo"]["info_data"]["vnet_hdr"] is True
        ip("-n", namespace, "route", "add", beyond, "dev", "gvt7")
        (fd,) = tun.fds
        family = socket.AF_INET6 if v6 else socket.AF_INET
        listener = in_namespace(namespace, lambda: socket.create_server((local, port), family=family))
        with listener:
            listener.settimeout(5)
            os.write(fd, PLAIN + tcp(client, local, sport=40000, dport=port, seq=999, flags=dpkt.tcp.TH_SYN))
            answer = read_one(fd)  # the SYN-ACK: a whole packet, its checksum complete
            assert answer[:VNET_HEADER_SIZE] in PLAIN_READS
            syn_ack = answer[VNET_HEADER_SIZE:]
            if v6:
                segment = syn_ack[40:]
                pseudo = syn_ack[8:40] + len(segment).to_bytes(4, "big") + bytes((0, 0, 0, 6))
            else:
                segment = syn_ack[20:]
                pseudo = syn_ack[12:20] + bytes((0, 6)) + len(segment).to_bytes(2, "big")
            assert rfc1071(pseudo + segment) == 0
            ack = dpkt.tcp.TCP(segment).seq + 1
            os.write(fd, PLAIN + tcp(client, local, sport=40000, dport=port, seq=1000, ack=ack))
            connection, _ = listener.accept()
            with connection:
                coalescer = Coalescer()
                for i in range(20):
                    chunk = bytes([65 + i]) * 1400
                    coalescer.push(tcp(client, local, chunk, sport=40000, dport=port, seq=1000 + 1400 * i, ack=ack))
                ((data, joined, _),) = coalescer.flush()
                before = rx_packets(namespace, "gvt7")
                assert joined == 20 and os.write(fd, data) == len(data)
                after = rx_packets(namespace, "gvt7")
                received = b""
                connection.settimeout(5)
                while len(received) < 20 * 1400:
                    received += connection.recv(65536)
    assert received == b"".join(bytes([65 + i]) * 1400 for i in range(20))
    assert after - before == 1  # one packet into the kernel for 20 segments


def test_an_existing_name_is_refused(namespace: str) -> None:
    with open_tun(TunSettings("gvt2"), namespace):
        with pytest.raises(TunError, match="an interface named gvt2 already exists"):
            open_tun(TunSettings("gvt2"), namespace)


def test_reverse_path_filtering_for_all_interfaces_is_refused(namespace: str) -> None:
    ip("netns", "exec", namespace, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
    with pytest.raises(TunError, match="net.ipv4.conf.all.rp_filter is on"):
        open_tun(TunSettings("gvt3"), namespace)
    assert "gvt3" not in ip("-n", namespace, "link", "show")


def test_ipv6_devices_get_no_link_local_address(namespace: str) -> None:
    with open_tun(TunSettings("gvt4", ipv6=True), namespace):
        assert "inet6" not in ip("-n", namespace, "addr", "show", "dev", "gvt4")


def test_an_ipv6_device_in_a_forwarding_namespace_sends_nothing_of_its_own(namespace: str) -> None:
    """No MLD reports: a router's device joins the all-routers group and would announce it."""
    settings = ("all.forwarding=1", "default.mldv1_unsolicited_report_interval=10")
    for setting in (*settings, "default.mldv2_unsolicited_report_interval=10"):  # any report within 20 ms
        ip("netns", "exec", namespace, "sysctl", "-qw", f"net.ipv6.conf.{setting}")
    with open_tun(TunSettings("gvt7", queues=2, ipv6=True), namespace) as tun:
        assert select.select(list(tun.fds), [], [], 0.5)[0] == []
        assert "ff02::2" not in ip("-n", namespace, "-6", "maddress", "show", "dev", "gvt7")


@pytest.mark.parametrize("settings", [{"queues": 0}, {"queues": 257}, {"mtu": 67}, {"txqueuelen": 0}, {"name": "a b"}])
def test_settings_errors(settings: dict[str, object]) -> None:
    with pytest.raises(TunError):
        TunSettings(**{"name": "gvt5", **settings})  # type: ignore[arg-type]


def test_a_missing_namespace_is_named() -> None:
    name = f"gvtun-absent-{uuid.uuid4().hex[:6]}"
    with pytest.raises(NamespaceError, match=f"network namespace {name}: cannot open /run/netns/{name}"):
        open_tun(TunSettings("gvt6"), name)
