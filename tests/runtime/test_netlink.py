"""rtnetlink link watching: the message parser, a real dump, and live changes inside a namespace."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import subprocess
import uuid

import pytest

from groupvpn.runtime.netlink import (
    IFINFOMSG,
    IFLA_IFNAME,
    NLMSG_HEADER,
    RTATTR,
    Link,
    LinkFlags,
    LinkWatcher,
    MessageType,
    NetlinkError,
    dump_request,
    parse,
)

UP = LinkFlags.IFF_UP | LinkFlags.IFF_RUNNING | LinkFlags.IFF_LOWER_UP


def message(kind: int, body: bytes) -> bytes:
    padding = -len(body) % 4
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, 0, 1, 0) + body + bytes(padding)


def link_message(index: int, name: str, flags: int, kind: int = MessageType.RTM_NEWLINK, extra: bytes = b"") -> bytes:
    raw = name.encode() + b"\0"
    attribute = RTATTR.pack(RTATTR.size + len(raw), IFLA_IFNAME) + raw + bytes(-len(raw) % 4)
    return message(kind, IFINFOMSG.pack(socket.AF_UNSPEC, 1, index, flags, 0xFFFFFFFF) + extra + attribute)


def test_links_and_their_state_from_several_messages_in_one_datagram():
    mtu = RTATTR.pack(8, 4) + (1500).to_bytes(4, "little")  # IFLA_MTU before the name
    data = (
        link_message(1, "lo", UP | LinkFlags.IFF_LOOPBACK)
        + link_message(7, "eth1", LinkFlags.IFF_UP, extra=mtu)  # up but no carrier
        + link_message(8, "eth2", 0, kind=MessageType.RTM_DELLINK)
        + message(MessageType.NLMSG_DONE, (0).to_bytes(4, "little"))
    )
    links = list(parse(data))
    assert [(link.index, link.name, link.up, link.present) for link in links] == [
        (1, "lo", True, True),
        (7, "eth1", False, True),
        (8, "eth2", False, False),
    ]


def test_an_error_reply_says_why():
    error = message(MessageType.NLMSG_ERROR, (-errno.EPERM).to_bytes(4, "little", signed=True) + bytes(16))
    with pytest.raises(NetlinkError, match="rtnetlink request refused: Operation not permitted"):
        list(parse(error))
    assert list(parse(message(MessageType.NLMSG_ERROR, bytes(20)))) == []  # an acknowledgement


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (NLMSG_HEADER.pack(200, MessageType.RTM_NEWLINK, 0, 0, 0), "length 200 at offset 0 overruns the datagram"),
        (message(MessageType.RTM_NEWLINK, bytes(8)), "link message of 8 octets is shorter than ifinfomsg"),
        (
            message(MessageType.RTM_NEWLINK, IFINFOMSG.pack(0, 0, 1, 0, 0) + RTATTR.pack(40, IFLA_IFNAME)),
            "link attribute of length 40 at offset 0 overruns its message",
        ),
    ],
)
def test_malformed_messages_are_refused(data, problem):
    with pytest.raises(NetlinkError, match=problem):
        list(parse(data))


def kinds(data: bytes) -> list[int]:
    """The message types in one datagram."""
    found, pos = [], 0
    while pos < len(data):
        length, kind = NLMSG_HEADER.unpack_from(data, pos)[:2]
        found.append(kind)
        pos += (length + 3) & ~3
    return found


def test_the_kernel_answers_a_dump_with_every_link():
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.send(dump_request(7))
        names = {}
        for _ in range(100):
            data = sock.recv(1 << 16)
            names.update({link.name: link for link in parse(data)})
            if MessageType.NLMSG_DONE in kinds(data):
                break
    assert names["lo"].up and names["lo"].index == socket.if_nametoindex("lo")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespace():
    name = f"gvpn-nl{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


async def next_state(queue: asyncio.Queue[Link], name: str, up: bool, present: bool = True) -> Link:
    """The next report for ``name`` in the wanted state; others (repeats, other links) are skipped."""
    async with asyncio.timeout(5):
        while True:
            link = await queue.get()
            if link.name == name and link.up == up and link.present == present:
                return link


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")
def test_the_watcher_sees_a_veth_in_its_namespace_go_up_down_and_away(namespace):
    async def scenario() -> None:
        queue: asyncio.Queue[Link] = asyncio.Queue()
        ip("-n", namespace, "link", "add", "gv0", "type", "veth", "peer", "name", "gv1")
        watcher = await LinkWatcher.open(queue.put_nowait, namespace)
        try:
            await next_state(queue, "gv0", up=False)  # from the initial dump
            ip("-n", namespace, "link", "set", "gv0", "up")
            ip("-n", namespace, "link", "set", "gv1", "up")
            await next_state(queue, "gv0", up=True)
            ip("-n", namespace, "link", "set", "gv1", "down")  # the far end: carrier lost
            await next_state(queue, "gv0", up=False)
            ip("-n", namespace, "link", "del", "gv0")
            await next_state(queue, "gv0", up=False, present=False)
        finally:
            watcher.close()

    asyncio.run(scenario())
