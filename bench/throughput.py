"""Host-to-host iperf3 through the lab topology: the plain routed path, strongSwan's userspace ESP, the group VPN.

h1 -> gm1 -> WAN router -> gm2 -> h2, in namespaces this script builds
(``groupvpn.ops.lab`` with a prefix of its own, two members) and removes
on exit, even on failure or Ctrl-C.  The paths take turns on the same
namespaces: plain routing, then per ``--esp`` suite strongSwan, then
groupvpn's daemons with that suite in the lab key server's configuration
(default data-plane workers, then ``--dataplane-workers 1`` for the
one-worker 64-octet rate, then ``--dataplane-offload on`` for TCP
with the GSO writes of ``dataplane.offload``).  Every test is run
``--repeat`` times for ``--seconds`` each and the median is reported,
with ratios to the plain routed path and, for the group VPN, to
strongSwan with the same suite:

* ``tcp``: one stream.  packets/s counts what h2's interface received;
  on plain veths, and from a member writing with offload, TCP travels as
  GSO super-packets, each counted once.
* ``udp1400`` / ``udp64``: ``-b 0`` (as fast as the sender can) with
  1372- and 36-octet payloads, i.e. 1400- and 64-octet IPv4 packets.
  An overload test: Mbit/s is iperf3's delivered payload rate, packets/s
  the packets delivered, loss what did not arrive.

The group VPN's traffic is checked to have crossed its data plane: gm1's
encrypted and gm2's decrypted counters grew by what h2 received (less a
few ARP frames),
and a few pings show up on the WAN as ESP between the hosts' addresses.

    python bench/throughput.py [--seconds 5] [--repeat 3] [--esp aes128gcm16 ...] [--no-strongswan] [--no-groupvpn]

Needs root, iproute2, iperf3, and for strongSwan strongswan-charon,
strongswan-swanctl and libcharon-extra-plugins (kernel-libipsec).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import benchlib
import libipsec
from grouppath import GroupVpn

from groupvpn.ops.lab import Lab, create, remove
from groupvpn.ops.lab_configs import ESP_SUITES

PORT = 5201
TESTS = {
    "tcp": (),
    "udp1400": ("-u", "-b", "0", "-l", "1372"),
    "udp64": ("-u", "-b", "0", "-l", "36"),
}
DEFAULT_ESP = ("aes128gcm16", "aes256-sha256")
SERVER_READY_TIMEOUT = 10.0
NOT_TUNNELLED = 10  # h2's interface also counts a few frames that never cross the tunnel: gm2's ARP


@dataclass(frozen=True)
class Result:
    mbps: float
    pps: float
    loss_percent: float | None  # None for TCP


def in_netns(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def packet_counters(netns: str, ifname: str) -> tuple[int, int]:
    """(received, sent) packets of one interface."""
    done = subprocess.run(
        ["ip", "-j", "-s", "-n", netns, "link", "show", ifname], check=True, capture_output=True, text=True, timeout=10
    )
    (link,) = json.loads(done.stdout)
    return link["stats64"]["rx"]["packets"], link["stats64"]["tx"]["packets"]


def received_packets(lab: Lab) -> int:
    return packet_counters(lab.host(2), "eth0")[0]


def iperf(lab: Lab, test: str, seconds: int) -> Result:
    before, _ = packet_counters(lab.host(2), "eth0")
    argv = in_netns(lab.host(1), "iperf3", "-c", str(lab.host_address(2).ip), "-p", str(PORT), "-t", str(seconds), "-J")
    done = subprocess.run([*argv, *TESTS[test]], check=False, capture_output=True, text=True, timeout=seconds + 30)
    report = json.loads(done.stdout or "{}")
    if done.returncode != 0 or "error" in report:
        raise RuntimeError(f"iperf3 {test}: {report.get('error') or done.stderr.strip()}")
    after, _ = packet_counters(lab.host(2), "eth0")
    received = report["end"]["sum_received"]
    mbps = received["bits_per_second"] / 1e6
    if test == "tcp":
        return Result(mbps, (after - before) / received["seconds"], None)
    udp = report["end"]["sum"]
    return Result(mbps, (udp["packets"] - udp["lost_packets"]) / udp["seconds"], udp["lost_percent"])


def measure(lab: Lab, seconds: int, repeat: int, tests: tuple[str, ...] = tuple(TESTS)) -> dict[str, Result]:
    results = {}
    for test in tests:
        runs = [iperf(lab, test, seconds) for _ in range(repeat)]
        losses = [r.loss_percent for r in runs if r.loss_percent is not None]
        results[test] = Result(
            benchlib.median([r.mbps for r in runs]),
            benchlib.median([r.pps for r in runs]),
            benchlib.median(losses) if losses else None,
        )
    return results


def start_server(lab: Lab) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        in_netns(lab.host(2), "iperf3", "-s", "-B", str(lab.host_address(2).ip), "-p", str(PORT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    while time.monotonic() < deadline:
        listening = subprocess.run(
            in_netns(lab.host(2), "ss", "-ltnH", f"sport = :{PORT}"), check=False, capture_output=True, text=True
        )
        if listening.stdout.strip():
            return server
        if server.poll() is not None:
            break
        time.sleep(0.05)
    server.kill()
    raise RuntimeError("iperf3 server did not start in h2")


def strongswan(lab: Lab, esp: str, workdir: Path, seconds: int, repeat: int) -> dict[str, Result]:
    gateways = [libipsec.Gateway(lab.gm(n), lab.member_wan(n).ip, lab.lan(n)) for n in (1, 2)]
    with libipsec.Tunnel(gateways[0], gateways[1], esp, workdir / esp):
        _, sent_before = packet_counters(lab.gm(1), "ipsec0")
        results = measure(lab, seconds, repeat)
        _, sent_after = packet_counters(lab.gm(1), "ipsec0")
    if sent_after - sent_before < results["tcp"].pps:  # a second's worth: the traffic went through ipsec0
        raise RuntimeError(f"strongSwan {esp}: traffic bypassed ipsec0 ({sent_after - sent_before} packets)")
    return results


def groupvpn(
    directory: Path, lab: Lab, esp: str, seconds: int, repeat: int, workers: tuple[str, ...], tests: tuple[str, ...]
) -> tuple[dict[str, Result], list[str]]:
    """The results and what proves they crossed the data plane (lines starting ``FAILED`` when it did not)."""
    with GroupVpn(directory, lab, esp, workers) as vpn:
        before = (*vpn.counters(), received_packets(lab))
        results = measure(lab, seconds, repeat, tests)
        after = (*vpn.counters(), received_packets(lab))
        wan = vpn.wan_esp()
    encrypted = after[0].encrypted - before[0].encrypted
    decrypted = after[1].decrypted - before[1].decrypted
    received = after[2] - before[2]
    crossed = received > 0 and min(encrypted, decrypted) >= received - NOT_TUNNELLED
    esp_lines = [line for line in wan if " ESP(" in line]
    on_wan = len(wan) > 0 and len(esp_lines) == len(wan)
    label = f"groupvpn {esp} {' '.join(workers) or '(default workers)'}"
    return results, [
        f"{'' if crossed else 'FAILED '}{label}: h2 received {received:,} packets; gm1 encrypted {encrypted:,}, "
        f"gm2 decrypted {decrypted:,}, drops gm1 {after[0].dropped - before[0].dropped:,} "
        f"gm2 {after[1].dropped - before[1].dropped:,}",
        f"{'' if on_wan else 'FAILED '}{label}: {len(esp_lines)} of {len(wan)} packets of h1<->h2 pings on the WAN "
        f"are ESP" + (f", e.g. {esp_lines[0].split(' ', 1)[1]}" if esp_lines else ""),
    ]


def render(results: dict[str, dict[str, Result]], peers: dict[str, str]) -> str:
    """One row per path and test; ``peers`` maps a group VPN path to the strongSwan path it is compared with."""
    baseline = results["plain routed"]
    rows = []
    for path, tests in results.items():
        peer = results.get(peers.get(path, ""), {})
        for test, r in tests.items():
            base = baseline[test]
            rows.append(
                [
                    path,
                    test,
                    f"{r.mbps:,.0f}",
                    f"{r.pps:,.0f}",
                    "-" if r.loss_percent is None else f"{r.loss_percent:.1f}",
                    benchlib.ratio(r.mbps, base.mbps),
                    benchlib.ratio(r.pps, base.pps),
                    benchlib.ratio(r.mbps, peer[test].mbps) if test in peer else "-",
                    benchlib.ratio(r.pps, peer[test].pps) if test in peer else "-",
                ]
            )
    headers = [
        "path", "test", "Mbit/s", "packets/s", "loss %",
        "Mbit/s vs plain", "packets/s vs plain", "Mbit/s vs strongSwan", "packets/s vs strongSwan",
    ]  # fmt: skip
    return benchlib.table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of each iperf3 run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per test; the median is reported")
    parser.add_argument(
        "--esp", action="append", choices=sorted(ESP_SUITES), help=f"ESP suite (default {', '.join(DEFAULT_ESP)})"
    )
    parser.add_argument("--no-strongswan", dest="strongswan", action="store_false", help="skip strongSwan")
    parser.add_argument("--no-groupvpn", dest="groupvpn", action="store_false", help="skip the group VPN")
    args = parser.parse_args()
    benchlib.require_root()
    if shutil.which("iperf3") is None:
        sys.exit("throughput.py needs iperf3")
    skipped = libipsec.missing() if args.strongswan else "--no-strongswan"

    # SIGTERM unwinds like Ctrl-C, so the namespaces are removed either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"terminated (signal {signal.SIGTERM})"))
    conditions = benchlib.machine(("iperf3", "--version"), (str(libipsec.CHARON), "--version"))
    workdir = Path(tempfile.mkdtemp(prefix="gvbench-", dir="/tmp"))  # not /run: charon mounts its own /run
    lab = Lab(f"gvb{os.getpid() % 100000}-", members=2)
    results: dict[str, dict[str, Result]] = {}
    peers: dict[str, str] = {}
    proofs: list[str] = []
    esps = args.esp or DEFAULT_ESP
    try:
        create(workdir / "lab", lab)
        server = start_server(lab)
        try:
            results["plain routed"] = measure(lab, args.seconds, args.repeat)
            if skipped is None:
                for esp in esps:
                    results[f"strongSwan libipsec {esp}"] = strongswan(lab, esp, workdir, args.seconds, args.repeat)
            for esp in esps if args.groupvpn else ():
                for workers, tests, label in (
                    ((), tuple(TESTS), f"groupvpn {esp}"),
                    (("--dataplane-workers", "1"), ("udp64",), f"groupvpn {esp}, 1 worker"),
                    (("--dataplane-offload", "on"), ("tcp",), f"groupvpn {esp}, offload on"),
                ):
                    run = (workdir / "lab", lab, esp, args.seconds, args.repeat, workers, tests)
                    results[label], proof = groupvpn(*run)
                    peers[label] = f"strongSwan libipsec {esp}"
                    proofs += proof
        finally:
            server.terminate()
            server.wait(10)
    finally:
        remove(workdir / "lab", lab.prefix)
        shutil.rmtree(workdir, ignore_errors=True)

    print("\n".join(conditions))
    print(f"command: python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print(f"each cell: median of {args.repeat} iperf3 runs of {args.seconds} s, h1 -> h2 through gm1, WAN, gm2")
    if skipped:
        print(f"strongSwan not measured: {skipped}")
    workers = "default data-plane workers (one per CPU), then --dataplane-workers 1, then --dataplane-offload on"
    print(f"group VPN: {workers if args.groupvpn else 'not measured (--no-groupvpn)'}")
    print(*proofs, sep="\n")
    print()
    print(render(results, peers))
    return 1 if any(proof.startswith("FAILED") for proof in proofs) else 0


if __name__ == "__main__":
    sys.exit(main())
