"""Where every echo of a ping stream went, hop by hop, and why each lost one was lost (issue 6).

A stream of pings from h1 to h2 crosses gm1, the WAN router and gm2 and
comes back.  Captures at the hops between namespaces -- h1's and h2's
``eth0`` and the router's links to gm1 and gm2, where the group's ESP is
decrypted with the keys the members held during the stream -- say, per
ICMP sequence number, the last place an echo that ping never counted was
seen, hence the namespace it vanished in.  The counters that moved there
during the stream say why, one counted drop per loss: a member's
data-plane drop reasons (unknown SPI, no SA, ICV failure...: the rollover
or another data-plane fault), or its links' queue drops (CPU starvation).
A reply that reached h1 but was not counted came after ping stopped
waiting.  A loss no drop accounts for is unexplained: the test fails
rather than guess.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from ipaddress import IPv4Address
from pathlib import Path

import dpkt

from groupvpn.wire.esp import TIMESTAMP_SHIM_SIZE
from groupvpn.wire.numbers import IpProtocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from tshark import read_fields  # noqa: E402

ECHO_REQUEST, ECHO_REPLY = 8, 0
# The log lines that place a loss in time: registrations, data-plane policies and the rollover's steps.
EVENT_WORDS = ("registered", "data plane up", "data plane policy", "push SEQ", "now encrypts", "expired", "deactivated")
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \w+: (.*)$", re.MULTILINE)
_PING_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from \S+ icmp_seq=(\d+) ", re.MULTILINE)
_PING_SENT = re.compile(r"^(\d+) packets transmitted, (\d+) received", re.MULTILINE)


@dataclass(frozen=True)
class Hop:
    """A capture point: the echoes it saw (sequence number -> first time), and the namespace after it.

    ``spis``: the SA that carried each echo there (ESP hops only).
    """

    name: str
    seen: Mapping[int, float]
    then: str
    spis: Mapping[int, int] | None = None


@dataclass(frozen=True)
class Drops:
    """What counted drops during the stream: per member its data plane, per namespace its links."""

    dataplane: Mapping[str, Mapping[str, int]]  # member -> drop reason -> count
    links: Mapping[str, Mapping[str, int]]  # namespace role -> "link counter" -> count
    backlog: int  # softnet backlog drops, machine-wide: reported, never proof (other tests share the CPUs)

    def since(self, before: Drops) -> Drops:
        """Only what grew since ``before``; members and namespaces with nothing new are left out."""
        dataplane = {k: grown for k, v in self.dataplane.items() if (grown := _moved(v, before.dataplane.get(k, {})))}
        links = {k: grown for k, v in self.links.items() if (grown := _moved(v, before.links.get(k, {})))}
        return Drops(dataplane, links, self.backlog - before.backlog)


class Cause(Enum):
    DATAPLANE = "data plane"  # a member dropped it, with a reason (the rollover, or another fault): never load
    LOAD = "load"  # a link's queue on its way overflowed, or ping stopped waiting
    UNEXPLAINED = "unexplained"


@dataclass(frozen=True)
class Loss:
    seq: int
    sent: float | None  # when h1 sent it (None: never seen leaving h1)
    last_seen: str
    namespace: str
    cause: Cause
    why: str


@dataclass(frozen=True)
class Event:
    at: float
    where: str
    text: str


def attribute(sent: int, path: Sequence[Hop], counted: Mapping[int, float], drops: Drops, origin: str) -> list[Loss]:
    """Every echo of 1..``sent`` ping did not count, with where it vanished and why.

    ``path``: the hops in the order an echo and its reply pass them;
    ``origin``: the pinging host's namespace (where an echo never seen
    leaving vanished, and where a reply seen arriving was not counted).
    Each drop counted in a namespace explains one loss there, the
    data plane's first: losses beyond the count are unexplained.  The
    machine-wide backlog count explains none (other tests share the
    CPUs; a full backlog counts on the device's link too).
    """
    left = {
        ns: [sum(drops.dataplane.get(ns, {}).values()), sum(drops.links.get(ns, {}).values())]
        for ns in {*drops.dataplane, *drops.links}
    }
    losses = []
    for seq in range(1, sent + 1):
        if seq in counted:
            continue
        seen = [i for i, hop in enumerate(path) if seq in hop.seen]
        last = seen[-1] if seen else None
        namespace = origin if last is None else path[last].then
        dataplane, load = left.get(namespace, [0, 0])
        if dataplane:
            cause, why = Cause.DATAPLANE, f"{namespace} dropped {dict(drops.dataplane[namespace])}"
            left[namespace][0] -= 1
        elif load:
            cause, why = Cause.LOAD, f"{namespace}'s links dropped {dict(drops.links[namespace])}"
            left[namespace][1] -= 1
        elif last == len(path) - 1:
            cause, why = Cause.LOAD, "the reply reached the host after ping stopped waiting"
        else:
            cause, why = Cause.UNEXPLAINED, f"no drop counted in {namespace} is left to explain it"
        where = "nowhere" if last is None else path[last].name
        losses.append(Loss(seq, path[0].seen.get(seq), where, namespace, cause, why))
    return losses


def report(
    sent: int,
    path: Sequence[Hop],
    losses: Sequence[Loss],
    drops: Drops,
    events: Sequence[Event],
    context: float = 3.0,
) -> str:
    """The stream for a human: totals, the SAs that carried it, the rollover, then each loss in context."""
    lines = [f"{sent} echoes sent, {sent - len(losses)} answered, {len(losses)} lost"]
    for hop in path:
        if hop.spis is not None:
            lines.append(f"  {hop.name}: {_runs(hop.spis)}")
    lines.append(f"  data-plane drops during the stream: {_mapping(drops.dataplane)}")
    lines.append(f"  link drops during the stream: {_mapping(drops.links)}; backlog drops {drops.backlog}")
    lines += [f"  {_clock(e.at)} {e.where}: {e.text}" for e in events]
    for loss in losses:
        when = "never seen leaving" if loss.sent is None else f"sent {_clock(loss.sent)}"
        lines.append(
            f"lost echo {loss.seq} ({when}), last seen {loss.last_seen}, vanished in {loss.namespace}: "
            f"{loss.cause.value}: {loss.why}"
        )
        if loss.sent is not None:
            near = [e for e in events if abs(e.at - loss.sent) <= context]
            lines += [f"    {e.at - loss.sent:+.3f} s {e.where}: {e.text}" for e in near]
    return "\n".join(lines)


def _runs(spis: Mapping[int, int]) -> str:
    """Which SA carried which echoes, in order: ``0x... 1-140, 0x... 141-287``."""
    runs: list[tuple[int, int, int]] = []  # (SPI, first, last)
    for seq in sorted(spis):
        if runs and runs[-1][0] == spis[seq] and runs[-1][2] == seq - 1:
            runs[-1] = (runs[-1][0], runs[-1][1], seq)
        else:
            runs.append((spis[seq], seq, seq))
    return ", ".join(f"0x{spi:08x} {first}-{last}" for spi, first, last in runs)


def _mapping(values: Mapping[str, Mapping[str, int]]) -> str:
    return ", ".join(f"{key} {dict(value)}" for key, value in values.items() if value) or "none"


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]


# -- reading what happened ------------------------------------------------------------------


def lan_echoes(pcap: Path, source: str, destination: str) -> tuple[dict[int, float], dict[int, float]]:
    """Echo requests from ``source`` to ``destination`` and the replies back, in an Ethernet capture."""
    requests: dict[int, float] = {}
    replies: dict[int, float] = {}
    wanted = {(source, destination, ECHO_REQUEST): requests, (destination, source, ECHO_REPLY): replies}
    with open(pcap, "rb") as f:
        for at, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            echo = _echo(bytes(ip)) if isinstance(ip, dpkt.ip.IP) else None
            if echo is not None and (*_addresses(ip), echo[0]) in wanted:
                wanted[(*_addresses(ip), echo[0])].setdefault(echo[1], at)
    return requests, replies


@dataclass
class WanEchoes:
    """One direction of the stream on a WAN link: the echoes it carried, and in which SA."""

    seen: dict[int, float] = field(default_factory=dict)
    spis: dict[int, int] = field(default_factory=dict)
    in_clear: int = 0  # packets between the two hosts that crossed the link unencrypted
    undecrypted: int = 0  # ESP frames of the stream tshark could not open with the keys given


def wan_echoes(pcap: Path, keys: Iterable[str], source: str, destination: str) -> tuple[WanEchoes, WanEchoes]:
    """Echo requests from ``source`` to ``destination`` and the replies back on a WAN link.

    The echoes are inside the group's ESP, opened by tshark with ``keys``
    (``esp_sa`` rows); packets between the hosts in clear, and ESP that
    does not open, are counted.
    """
    fields = ["frame.time_epoch", "ip.src", "ip.dst", "ip.proto", "esp.spi", "esp.icv_good", "esp.contained_data"]
    prefs = ["esp.enable_encryption_decode:TRUE", "esp.enable_authentication_check:TRUE"]
    prefs += [f"uat:esp_sa:{row}" for row in sorted(keys)]
    requests, replies = WanEchoes(), WanEchoes()
    wanted = {(source, destination): (ECHO_REQUEST, requests), (destination, source): (ECHO_REPLY, replies)}
    for frame in read_fields(pcap, fields, prefs=prefs):
        addresses = (*frame.values("ip.src")[:1], *frame.values("ip.dst")[:1])
        if addresses not in wanted:
            continue
        kind, echoes = wanted[addresses]
        if frame.ints("ip.proto")[:1] != (IpProtocol.ESP,):
            echoes.in_clear += 1
            continue
        contained = frame.hexes("esp.contained_data")
        echo = _echo(contained[0][TIMESTAMP_SHIM_SIZE:]) if contained and frame.ints("esp.icv_good") == (1,) else None
        if echo is None:
            echoes.undecrypted += 1
        elif echo[0] == kind:
            echoes.seen.setdefault(echo[1], float(frame.values("frame.time_epoch")[0]))
            echoes.spis.setdefault(echo[1], frame.ints("esp.spi")[0])
    return requests, replies


def _addresses(ip: dpkt.ip.IP) -> tuple[str, str]:
    return str(IPv4Address(ip.src)), str(IPv4Address(ip.dst))


def _echo(packet: bytes) -> tuple[int, int] | None:
    """(ICMP type, sequence number) of an IPv4 echo request or reply; None for anything else."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != IpProtocol.ICMP:
        return None
    icmp = packet[(packet[0] & 0x0F) * 4 :]
    if len(icmp) < 8 or icmp[0] not in (ECHO_REQUEST, ECHO_REPLY):
        return None
    return icmp[0], int.from_bytes(icmp[6:8], "big")


def ping_counted(output: str) -> tuple[int, dict[int, float]]:
    """From ``ping -D`` output: how many echoes it sent, and the replies it counted (sequence -> time)."""
    totals = _PING_SENT.search(output)
    if totals is None:
        raise AssertionError(f"ping printed no statistics: {output!r}")
    counted = {int(seq): float(at) for at, seq in _PING_REPLY.findall(output)}
    if len(counted) != int(totals.group(2)):
        raise AssertionError(f"ping counted {totals.group(2)} replies but printed {len(counted)}: {output!r}")
    return int(totals.group(1)), counted


def member_events(log: str, member: str, since: float, until: float) -> list[Event]:
    """The member's registration, data-plane and rollover log lines between ``since`` and ``until``."""
    events = []
    for stamp, text in _LOG_LINE.findall(log):
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if since <= at <= until and any(word in text for word in EVENT_WORDS):
            events.append(Event(at, member, text))
    return events


def link_drops(namespace: str) -> dict[str, int]:
    """Every link's drop and error counters in ``namespace`` (``ip -s link``), by "link counter"."""
    done = subprocess.run(
        ["ip", "-n", namespace, "-s", "-j", "link", "show"], capture_output=True, text=True, check=True, timeout=10
    )
    counters = {}
    for link in json.loads(done.stdout):
        for direction in ("rx", "tx"):
            stats = link.get("stats64", {}).get(direction, {})
            for name in ("dropped", "errors", "over_errors", "missed", "fifo_errors"):
                if name in stats:
                    counters[f"{link['ifname']} {direction}_{name}"] = int(stats[name])
    return counters


def backlog_drops() -> int:
    """Packets the kernel's per-CPU input backlogs dropped since boot (/proc/net/softnet_stat, column 2)."""
    lines = Path("/proc/net/softnet_stat").read_text().split("\n")
    return sum(int(line.split()[1], 16) for line in lines if line.strip())


def _moved(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """The counters that grew from ``before`` to ``after``, by how much."""
    return {name: value - before.get(name, 0) for name, value in after.items() if value > before.get(name, 0)}
