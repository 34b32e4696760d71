"""``groupvpn lab demo``: the lab's whole story in one command, every step checked, none faked.

``lab up``, then a bounded wait until every member is registered and runs
its data plane; then the group VPN at work: every host pings every other
while the WAN router captures its link to gm1, tshark shows that capture
as ESP between the hosts' own addresses (header preservation) and, given
the keys ``groupvpn export wireshark-keys --show-keys`` prints, the ICMP
inside; iperf3 measures TCP from h1 to h2; the daemons' ``show`` views;
a one-screen summary.  The first step that fails ends the demo with its
reason and exit status 1.  ``lab down`` follows unless ``--keep``.

The demo prints the lab group's keys (they are what tshark decrypts
with); they protect nothing but this lab, which gets new ones each time.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any, TextIO, TypeVar

from ..runtime.control import ControlError, call
from .lab import Lab, LabError, load_state, remove, up
from .netlab import existing_namespaces

T = TypeVar("T")

TOOLS = ("ping", "tcpdump", "tshark", "iperf3")
READY_TIMEOUT = 30.0  # registration takes about a second; the data plane starts right after
FLOW_TIMEOUT = 15.0  # the first packets cross once each member's policy reached its workers
PING_COUNT = 3
IPERF_SECONDS = 3
IPERF_PORT = 5201
TSHARK_TIMEOUT = 30.0
CAPTURE_QUIET = 0.3  # the capture is complete once it stopped growing this long after the pings
SHOWN_FRAMES = 6
ESP = "50"
ICMP = "1"
DECRYPT_PREFS = ("esp.enable_encryption_decode:TRUE", "esp.enable_authentication_check:TRUE")
SHOW_VIEWS = (
    ("ks", ("server", "registered-members")),
    ("gm1", ("member", "ipsec", "security-associations")),
    ("gm1", ("member", "ipsec", "statistics")),
)


class DemoFailed(Exception):
    """A demo step did not show what it should; the message says what happened instead."""


@dataclass(slots=True)
class Summary:
    """What the demo has shown so far; ``None`` for a step not reached."""

    members: int
    registered: int | None = None
    data_planes: int | None = None
    pings_ok: int | None = None
    pings_total: int | None = None
    iperf_mbits: float | None = None
    esp_packets: int | None = None
    preserved: bool | None = None
    decrypted: int | None = None
    failure: str | None = None

    def lines(self) -> list[str]:
        def row(label: str, value: str | None) -> str:
            return f"  {label:<28}{value if value is not None else 'not reached'}"

        def yes_no(flag: bool | None) -> str | None:
            return None if flag is None else ("yes" if flag else "no")

        mbits = None if self.iperf_mbits is None else f"{self.iperf_mbits:.1f} Mbit/s"
        pings = None if self.pings_ok is None else f"{self.pings_ok} of {self.pings_total} replied"
        esp = None if self.esp_packets is None else f"{self.esp_packets} packets on the WAN router's link to gm1"
        decrypt = None
        if self.decrypted is not None and self.esp_packets is not None:
            verdict = "ok" if self.decrypted == self.esp_packets else "FAILED"
            decrypt = f"{verdict} ({self.decrypted} of {self.esp_packets} ESP packets show the inner ICMP)"
        return [
            "Summary",
            row("registered members", None if self.registered is None else f"{self.registered} of {self.members}"),
            row("data planes running", None if self.data_planes is None else f"{self.data_planes} of {self.members}"),
            row(f"pings ({PING_COUNT} per host pair)", pings),
            row(f"iperf3 h1 -> h2 ({IPERF_SECONDS} s TCP)", mbits),
            row("ESP seen", esp),
            row("hosts' addresses outside", yes_no(self.preserved)),
            row("tshark decrypt", decrypt),
            row("result", "ok" if self.failure is None else f"FAILED: {self.failure}"),
        ]


def demo(directory: Path, lab: Lab, replace: bool, keep: bool, out: TextIO) -> int:
    """Run the demo on a new lab in ``directory``; 0 when every step showed what it should."""
    if lab.members < 2:
        raise LabError("the demo needs at least 2 members (hosts ping each other across the group)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabError(f"the demo needs {', '.join(missing)} (`make deps` installs them)")
    if replace:
        print(f"removed {len(remove(directory, lab.prefix))} namespaces of an earlier lab", file=out)
    summary = Summary(lab.members)
    run = _Demo(directory, lab, summary, out)
    run.step("groupvpn lab up")
    started = up(directory, lab, daemons=True, out=out)  # refuses (LabError) when a lab is up: nothing to undo
    try:
        run.run(started == 0)
    except DemoFailed as err:
        summary.failure = str(err)
    finally:
        print("", *summary.lines(), sep="\n", file=out)
        if keep:
            print(f"lab kept: `groupvpn lab down --dir {directory}` removes it", file=out)
        elif existing_namespaces() & set(lab.namespaces):
            print(f"lab down: removed {len(remove(directory, lab.prefix))} namespaces", file=out)
    return 0 if summary.failure is None else 1


@dataclass(slots=True)
class _Demo:
    directory: Path
    lab: Lab
    summary: Summary
    out: TextIO

    def run(self, started: bool) -> None:
        if not started:
            raise DemoFailed(f"a daemon did not start (logs in {self.directory})")
        not_started = [role for role, record in self._daemons().items() if record["status"] != "started"]
        if not_started:
            where = f"see `groupvpn lab status --dir {self.directory}`"
            raise DemoFailed(f"not started: {', '.join(not_started)} ({where})")
        self._wait_ready()
        self._ping_and_capture()
        self._iperf()
        self._show()

    # -- steps ------------------------------------------------------------------------------

    def _wait_ready(self) -> None:
        self.step("members registering, data planes starting")
        started = time.monotonic()

        def ready() -> bool:
            registered = self._registered()
            planes = {role: self._data_plane(role) for role in self._members()}
            self.summary.registered = len(registered)
            self.summary.data_planes = sum(state.startswith("running") for state in planes.values())
            return self.summary.registered == self.lab.members and self.summary.data_planes == self.lab.members

        if not _poll(ready, READY_TIMEOUT):
            planes = "; ".join(f"{role}: {self._data_plane(role)}" for role in self._members())
            raise DemoFailed(
                f"after {READY_TIMEOUT:.0f} s {self.summary.registered} of {self.lab.members} members are registered "
                f"and the data planes are: {planes} (member logs in {self.directory})"
            )
        for address in sorted(self._registered()):
            print(f"  registered: {address}", file=self.out)
        for role in self._members():
            print(f"  {role} data plane: {self._data_plane(role)}", file=self.out)
        print(f"  ready after {time.monotonic() - started:.1f} s", file=self.out)

    def _ping_and_capture(self) -> None:
        self.step("every host pings every other (the WAN router captures its link to gm1)")
        pairs = list(permutations(self.lab.numbers, 2))
        started = time.monotonic()
        if not _poll(lambda: all(self._pings(pairs, count=1).values()), FLOW_TIMEOUT):
            raise DemoFailed(f"no traffic crossed the group within {FLOW_TIMEOUT:.0f} s of the data planes starting")
        print(f"  traffic flows between every host pair after {time.monotonic() - started:.1f} s", file=self.out)
        pcap = self.directory / "wan-gm1.pcap"
        with _Capture(self.lab.wan, "gm1", pcap):
            replies = self._pings(pairs, PING_COUNT)
        for (a, b), count in replies.items():
            print(f"  h{a} -> h{b} {self._host(b)}: {count} of {PING_COUNT} replies", file=self.out)
        self.summary.pings_ok, self.summary.pings_total = sum(replies.values()), PING_COUNT * len(pairs)
        if self.summary.pings_ok != self.summary.pings_total:
            raise DemoFailed(f"only {self.summary.pings_ok} of {self.summary.pings_total} pings were answered")
        self._wan_view(pcap)

    def _wan_view(self, pcap: Path) -> None:
        fields = ("ip.src", "ip.dst", "ip.proto", "esp.spi")
        self.step(f"the capture, as tshark decodes it: tshark -r {pcap} -T fields -e {' -e '.join(fields)}")
        frames = _tshark(pcap, fields)
        for frame in frames[:SHOWN_FRAMES]:
            print("  " + "  ".join(frame), file=self.out)
        print(f"  ... {len(frames)} frames", file=self.out)
        hosts = {self._host(n) for n in self.lab.numbers}
        esp = [frame for frame in frames if frame[2] == ESP]
        clear_icmp = [frame for frame in frames if frame[2] == ICMP and {frame[0], frame[1]} <= hosts]
        self.summary.esp_packets = len(esp)
        self.summary.preserved = bool(esp) and all({frame[0], frame[1]} <= hosts for frame in esp)
        if not esp:
            raise DemoFailed("no ESP on the WAN: the pings crossed it in clear")
        if clear_icmp:
            raise DemoFailed(f"{len(clear_icmp)} ICMP packets between hosts crossed the WAN in clear")
        if not self.summary.preserved:
            raise DemoFailed("ESP on the WAN carries addresses other than the hosts' own")

        self.step("decrypted with the keys of: groupvpn export wireshark-keys --show-keys --format tshark")
        print("  NOTE: this reveals the lab group's keys (new with every lab, protecting nothing else):", file=self.out)
        export = ("export", "wireshark-keys", "--show-keys", "--format", "tshark", "--socket", self._socket("gm1"))
        exported = _groupvpn(*export)
        rows = exported.stdout.splitlines()
        for row in rows:
            print(f"  -o {row}", file=self.out)
        prefs = (*DECRYPT_PREFS, *rows)
        decrypted = _tshark(pcap, ("ip.src", "ip.dst", "esp.spi", "esp.icv_good", "icmp.type"), prefs)
        esp_decrypted = [frame for frame in decrypted if frame[2]]
        for frame in esp_decrypted[:SHOWN_FRAMES]:
            print("  " + "  ".join(frame), file=self.out)
        self.summary.decrypted = sum(bool(frame[4]) for frame in esp_decrypted)
        print(f"  {self.summary.decrypted} of {len(esp)} ESP packets decrypt to ICMP", file=self.out)
        if self.summary.decrypted != len(esp):
            raise DemoFailed(f"tshark found the inner ICMP in {self.summary.decrypted} of {len(esp)} ESP packets")

    def _iperf(self) -> None:
        self.step(f"iperf3: {IPERF_SECONDS} s of TCP from h1 to h2 across the group")
        server_address = self._host(2)
        server = subprocess.Popen(
            _in(self.lab.host(2), "iperf3", "--server", "--one-off", "--bind", server_address, "-p", str(IPERF_PORT)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not _poll(lambda: self._listening(2, IPERF_PORT), 5.0):
                raise DemoFailed("the iperf3 server in h2 did not start listening within 5 s")
            client = _command(
                _in(self.lab.host(1), "iperf3", "--client", server_address, "--port", str(IPERF_PORT),
                    "--time", str(IPERF_SECONDS), "--json"),  # fmt: skip
                timeout=IPERF_SECONDS + 15,
            )
        finally:
            server.kill()
            server.wait(10)
        try:
            report = json.loads(client.stdout)
        except ValueError:
            raise DemoFailed(f"iperf3 printed no report: {client.stderr.strip()}") from None
        if "error" in report or client.returncode != 0:
            raise DemoFailed(f"iperf3 failed: {report.get('error', client.stderr.strip())}")
        self.summary.iperf_mbits = report["end"]["sum_received"]["bits_per_second"] / 1e6
        print(f"  {self.summary.iperf_mbits:.1f} Mbit/s received by h2", file=self.out)

    def _show(self) -> None:
        for role, words in SHOW_VIEWS:
            self.step(f"groupvpn show security group-vpn {' '.join(words)} ({role})")
            shown = _groupvpn("show", "security", "group-vpn", *words, "--socket", self._socket(role))
            print(shown.stdout.rstrip(), file=self.out)

    # -- helpers ----------------------------------------------------------------------------

    def step(self, title: str) -> None:
        """A step's heading; what came before is flushed so that the demo reads live through a pipe too."""
        print(f"\n== {title}", file=self.out)
        self.out.flush()

    def _daemons(self) -> dict[str, dict[str, Any]]:
        state = load_state(self.directory)
        return state["daemons"] if state else {}

    def _members(self) -> list[str]:
        return [f"gm{n}" for n in self.lab.numbers]

    def _socket(self, role: str) -> str:
        return str(self.directory / f"{role}.sock")

    def _host(self, n: int) -> str:
        return str(self.lab.host_address(n).ip)

    def _view(self, role: str, topic: str) -> list[dict[str, Any]]:
        request = {"op": "show", "role": "server" if role == "ks" else "member", "topic": topic, "show_keys": False}
        try:
            records: list[dict[str, Any]] = call(Path(self._socket(role)), request, timeout=2.0).get("records", [])
        except ControlError:
            return []
        return records

    def _registered(self) -> set[str]:
        return {r["member"] for r in self._view("ks", "registered-members") if r["state"] == "active"}

    def _data_plane(self, role: str) -> str:
        records = self._view(role, "ipsec-statistics")
        return ", ".join(str(r["data_plane"]) for r in records) or "no answer"

    def _pings(self, pairs: Sequence[tuple[int, int]], count: int) -> dict[tuple[int, int], int]:
        """Each (source, destination) host pair pings ``count`` times, all at once; the replies per pair."""
        running = {
            (a, b): subprocess.Popen(
                _in(self.lab.host(a), "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", self._host(b)),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for a, b in pairs
        }
        return {pair: _replies(ping, count) for pair, ping in running.items()}

    def _listening(self, host: int, port: int) -> bool:
        sockets = _command(_in(self.lab.host(host), "ss", "-H", "-l", "-t", "-n", f"sport = :{port}"), timeout=5)
        return bool(sockets.stdout.strip())


class _Capture:
    """tcpdump on ``interface`` of ``netns`` into ``pcap`` for the ``with`` block, complete at its end."""

    def __init__(self, netns: str, interface: str, pcap: Path) -> None:
        self.pcap = pcap
        self.argv = _in(netns, "tcpdump", "-i", interface, "-n", "--immediate-mode", "-U", "-w", str(pcap))
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> _Capture:
        self.pcap.unlink(missing_ok=True)
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not _poll(lambda: self._size() >= 24, 10.0):  # the pcap file header: tcpdump is capturing
            _, errors = self._stop()
            raise DemoFailed(f"tcpdump did not start capturing: {errors.strip()}")
        return self

    def __exit__(self, *_: object) -> None:
        sizes = [self._size()]

        def quiet() -> bool:
            sizes.append(self._size())
            return sizes[-1] == sizes[-2]

        _poll(quiet, 3.0, interval=CAPTURE_QUIET)  # -U writes each packet as it is seen
        self._stop()

    def _size(self) -> int:
        return self.pcap.stat().st_size if self.pcap.exists() else 0

    def _stop(self) -> tuple[str, str]:
        """SIGTERM (tcpdump then writes what it has) or, if that does not end it, SIGKILL; its output."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.communicate(timeout=5)


def _in(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def _command(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DemoFailed(f"{' '.join(argv)}: no result within {timeout:.0f} s") from None


def _groupvpn(*args: str) -> subprocess.CompletedProcess[str]:
    """This ``groupvpn`` run as the operator would, failing the demo when it fails."""
    done = _command([sys.executable, "-m", "groupvpn.cli", *args], timeout=20)
    if done.returncode != 0:
        raise DemoFailed(f"groupvpn {' '.join(args)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done


def _tshark(pcap: Path, fields: Sequence[str], prefs: Sequence[str] = ()) -> list[list[str]]:
    """One list of ``fields`` per frame (occurrences of a field comma-joined, and deduplicated here)."""
    argv = ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=/t"]
    argv += [arg for pref in prefs for arg in ("-o", pref)]
    argv += [arg for field in fields for arg in ("-e", field)]
    done = _command(argv, TSHARK_TIMEOUT)
    if done.returncode != 0:
        raise DemoFailed(f"tshark: {done.stderr.strip()}")
    return [
        [",".join(dict.fromkeys(value.split(","))) if value else "" for value in line.split("\t")]
        for line in done.stdout.splitlines()
    ]


def _replies(ping: subprocess.Popen[str], count: int) -> int:
    """Echo replies counted by ``ping -q``'s statistics line ("3 packets transmitted, 3 received, ...")."""
    try:
        output, _ = ping.communicate(timeout=count * 0.2 + 10)
    except subprocess.TimeoutExpired:
        ping.kill()
        ping.communicate()
        return 0
    for line in output.splitlines():
        if "packets transmitted" in line:
            return int(line.split(",")[1].split()[0])
    return 0


def _poll(condition: Callable[[], T], timeout: float, interval: float = 0.2) -> T | None:
    """``condition()`` until it is true or ``timeout`` seconds have passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(interval)
