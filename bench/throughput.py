"""Host-to-host iperf3 through the lab topology: the plain routed path, then strongSwan's userspace ESP.

h1 -> gm1 -> WAN router -> gm2 -> h2, in namespaces this script builds
(``groupvpn.ops.lab`` with a prefix of its own, two members, no daemons)
and removes on exit, even on failure or Ctrl-C.  Every test is run
``--repeat`` times for ``--seconds`` each and the median is reported, with
ratios to the plain routed path measured in the same run:

* ``tcp``: one stream.  packets/s counts what h2's interface received;
  on plain veths TCP travels as GSO super-packets, each counted once.
* ``udp1400`` / ``udp64``: ``-b 0`` (as fast as the sender can) with
  1372- and 36-octet payloads, i.e. 1400- and 64-octet IPv4 packets.
  An overload test: Mbit/s is iperf3's delivered payload rate, packets/s
  the packets delivered, loss what did not arrive.

    python bench/throughput.py [--seconds 5] [--repeat 3] [--esp aes128gcm16 ...] [--no-strongswan]

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

from groupvpn.ops.lab import Lab, create, remove

PORT = 5201
TESTS = {
    "tcp": (),
    "udp1400": ("-u", "-b", "0", "-l", "1372"),
    "udp64": ("-u", "-b", "0", "-l", "36"),
}
DEFAULT_ESP = ("aes128gcm16", "aes256-sha256")
SERVER_READY_TIMEOUT = 10.0


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


def measure(lab: Lab, seconds: int, repeat: int) -> dict[str, Result]:
    results = {}
    for test in TESTS:
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


def render(results: dict[str, dict[str, Result]]) -> str:
    baseline = results["plain routed"]
    rows = []
    for path, tests in results.items():
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
                ]
            )
    headers = ["path", "test", "Mbit/s", "packets/s", "loss %", "Mbit/s vs plain", "packets/s vs plain"]
    return benchlib.table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of each iperf3 run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per test; the median is reported")
    parser.add_argument("--esp", action="append", help=f"strongSwan ESP proposal (default {', '.join(DEFAULT_ESP)})")
    parser.add_argument("--no-strongswan", dest="strongswan", action="store_false", help="only the plain routed path")
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
    try:
        create(workdir / "lab", lab)
        server = start_server(lab)
        try:
            results["plain routed"] = measure(lab, args.seconds, args.repeat)
            if skipped is None:
                for esp in args.esp or DEFAULT_ESP:
                    results[f"strongSwan libipsec {esp}"] = strongswan(lab, esp, workdir, args.seconds, args.repeat)
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
    print("group VPN: not measured (data plane pending)\n")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
