"""What ONE data-plane worker sustains in one direction with 64-octet packets: CPU per packet, packets per CPU-second.

``throughput.py``'s one-worker UDP 64 B row runs the iperf3 sender, both
members' workers, the receiver and the kernel on the same CPUs, so it
measures how they share them.  Here a lab of its own (``groupvpn.ops.lab``,
prefix ``gvw<pid>-``, two members with ``--dataplane-workers 1``, removed on
exit even on failure, Ctrl-C or SIGTERM) gives the measured worker a CPU:

* the measured worker is pinned to the last CPU and the other member's
  worker to the first, by ``sched_setaffinity`` on their PIDs (``taskset
  -p``; the member's ``--dataplane-pin-cpus`` puts worker i on CPU i, so
  both members' single workers would share CPU 0); the generator
  (``udpflood.py``: one flow of 64-octet IPv4/UDP packets h1 -> h2 from one
  Python process, since iperf3 needs a return path) runs on the first CPU.
  Other jobs on the machine are not moved;
* encrypt: gm1's worker.  The WAN router discards the ESP with a blackhole
  route to h2's LAN, so gm2 does no work; counted: gm1's ``encrypted``
  counter and the packets the WAN router received from gm1;
* decrypt: gm2's worker.  gm1's worker encrypts on the generator's CPU, so
  gm2 is offered what gm1 manages; counted: gm2's ``decrypted`` counter,
  the ESP the WAN router forwarded to gm2 and what h2 received.

Worker CPU is utime + stime from /proc/PID/stat over each run: the TUN
syscalls and the softirq work done in the worker's context are charged to
it (gm1's ESP forwarded through gm1 into the WAN router; gm2's inner
packets delivered to h2).  Softirq work the kernel defers to ksoftirqd on
the worker's CPU is not, and is shown beside it.  A worker that is offered
less than it can take, or shares its CPU with other jobs, wakes for fewer
packets at a time, so its packets per CPU-second is then a lower bound.

Each cell is the median of ``--repeat`` runs of ``--seconds``; the plain
routed path with the same generator on the same CPU (no daemons) is the
same-run baseline.  The counted packets are checked to have crossed the
worker (counters against the links' counters), and a few pings to show up
on the WAN as ESP between the hosts' addresses; a failed check is printed
as ``FAILED ...`` and the script exits 1.

    python bench/worker_rate.py [--seconds 4] [--repeat 3] [--esp aes128gcm16 ...]

Needs root, iproute2, tcpdump and two or more CPUs.
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
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Self

import benchlib
from grouppath import GroupVpn

from groupvpn.ops.lab import Lab, create, remove
from groupvpn.ops.lab_configs import ESP_SUITES
from groupvpn.ops.netlab import processes

DEFAULT_ESP = ("aes128gcm16", "aes256-sha256")
MEMBER_OPTIONS = ("--dataplane-workers", "1")
WORKER_MODULE = "groupvpn.dataplane.worker"
FLOOD = Path(__file__).with_name("udpflood.py")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SLACK_PER_RUN = 10  # packets on the counted links besides the flow: ARP, the odd ICMP error from h2
TARGET_PPS = 100_000  # issue 6: one worker, 64-octet packets, one direction


@dataclass(frozen=True)
class Direction:
    name: str
    member: int  # whose worker is measured
    tun_suffix: str  # steering.SteeringPlan names a VPN's TUNs gvpnNo (outbound) and gvpnNi (inbound)


ENCRYPT = Direction("encrypt", 1, "o")
DECRYPT = Direction("decrypt", 2, "i")


@dataclass(frozen=True)
class Snapshot:
    """The counters a run is judged by, read once no traffic flows; subtracting two gives a run's deltas."""

    encrypted: int  # gm1's counter
    decrypted: int  # gm2's counter
    tun_read: int  # packets the measured worker read from its TUN queue
    tun_dropped: int  # packets that queue dropped because it was full
    wan_from_gm1: int
    wan_to_gm2: int
    h2_received: int
    worker_cpu: float  # seconds

    def __sub__(self, other: Self) -> Snapshot:
        return Snapshot(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Run:
    """One run's rates; ``processed`` is what the worker encrypted or decrypted (its member's counter)."""

    generated: float  # packets/s the generator sent
    offered: float  # packets/s into the worker's TUN queue (read + dropped)
    processed: float
    loss: float  # % of offered dropped by the TUN queue
    cpu: float  # worker CPU seconds per second
    softirqd: float  # ksoftirqd of the worker's CPU, CPU seconds per second while the generator ran
    busy: float  # the worker's CPU, all tasks and interrupts, likewise
    us_per_packet: float

    @property
    def per_cpu_second(self) -> float:
        """What the worker would sustain with a CPU to itself at this cost per packet."""
        return 1e6 / self.us_per_packet


@dataclass(frozen=True)
class Plain:
    generated: float
    delivered: float  # packets/s h2 received


@dataclass(frozen=True)
class Cpus:
    generator: int
    worker: int


# -- what the kernel counts ---------------------------------------------------------------


def link_stats(netns: str, *selector: str) -> dict[str, dict[str, dict[str, int]]]:
    done = subprocess.run(
        ["ip", "-j", "-s", "-n", netns, "link", "show", *selector], check=True, capture_output=True, text=True
    )
    return {link["ifname"]: link["stats64"] for link in json.loads(done.stdout)}


def tun_stats(lab: Lab, direction: Direction) -> dict[str, int]:
    tuns = link_stats(lab.gm(direction.member), "type", "tun")
    (name,) = [name for name in tuns if name.endswith(direction.tun_suffix)]
    return tuns[name]["tx"]  # the kernel "transmits" to the reader: packets read, dropped when the queue is full


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its ``comm`` may hold spaces and parentheses: fields count from the last ')')."""
    after_comm = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_comm[11]) + int(after_comm[12])) / CLOCK_TICKS


def busy_seconds(cpu: int) -> float:
    """Time ``cpu`` was not idle: tasks, interrupts, or taken by the hypervisor (steal); /proc/stat, in ticks."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name == f"cpu{cpu}":
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, ticks[:8])
            return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def ksoftirqd(cpu: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == f"ksoftirqd/{cpu}":
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError(f"no ksoftirqd/{cpu}")


def sharing(softirqd: int, cpu: int) -> tuple[float, float, float]:
    """(monotonic time, ksoftirqd's CPU seconds, the CPU's busy seconds): who else used the worker's CPU."""
    return time.monotonic(), cpu_seconds(softirqd), busy_seconds(cpu)


def worker_pid(lab: Lab, member: int) -> int:
    """The PID of the member's single data-plane worker (a child process in the member's namespace)."""
    found: list[int] = []
    for pid in processes(lab.gm(member)):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if WORKER_MODULE.encode() in argv:
            found.append(pid)
    if len(found) != 1:
        raise RuntimeError(f"gm{member}: expected one data-plane worker, found PIDs {found}")
    return found[0]


def snapshot(vpn: GroupVpn, lab: Lab, direction: Direction, worker: int) -> Snapshot:
    gm1, gm2 = vpn.counters()  # waits until the workers' once-a-second reports stop changing
    tun = tun_stats(lab, direction)
    wan = link_stats(lab.wan)
    return Snapshot(
        gm1.encrypted,
        gm2.decrypted,
        tun["packets"],
        tun["dropped"],
        wan["gm1"]["rx"]["packets"],
        wan["gm2"]["tx"]["packets"],
        link_stats(lab.host(2), "dev", "eth0")["eth0"]["rx"]["packets"],
        cpu_seconds(worker),
    )


# -- traffic ----------------------------------------------------------------------------


def flood(lab: Lab, seconds: int, cpu: int) -> tuple[int, float]:
    """(packets sent, seconds) of one generator run from h1 to h2, pinned to ``cpu``."""
    argv = ["taskset", "-c", str(cpu), "ip", "netns", "exec", lab.host(1), sys.executable, str(FLOOD)]
    done = subprocess.run(
        [*argv, str(lab.host_address(2).ip), "--seconds", str(seconds)],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    report = json.loads(done.stdout)
    return report["sent"], report["seconds"]


@contextmanager
def discarded_at_wan(lab: Lab) -> Iterator[None]:
    """The WAN router silently drops what is routed to h2's LAN, so gm2 and h2 do no work; the route comes back."""
    lan = str(lab.lan(2))
    subprocess.run(["ip", "-n", lab.wan, "route", "replace", "blackhole", lan], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "-n", lab.wan, "route", "replace", lan, "via", str(lab.member_wan(2).ip)], check=True)


def plain(lab: Lab, seconds: int, repeat: int, cpus: Cpus) -> Plain:
    runs = []
    for _ in range(repeat):
        before = link_stats(lab.host(2), "dev", "eth0")["eth0"]["rx"]["packets"]
        sent, elapsed = flood(lab, seconds, cpus.generator)
        after = link_stats(lab.host(2), "dev", "eth0")["eth0"]["rx"]["packets"]
        runs.append(Plain(sent / elapsed, (after - before) / elapsed))
    return Plain(benchlib.median([r.generated for r in runs]), benchlib.median([r.delivered for r in runs]))


def measure(
    vpn: GroupVpn, lab: Lab, direction: Direction, seconds: int, repeat: int, cpus: Cpus
) -> tuple[Run, list[str]]:
    """The median run of the direction's worker and what proves the counted packets crossed it."""
    worker = worker_pid(lab, direction.member)
    other = worker_pid(lab, 3 - direction.member)
    os.sched_setaffinity(worker, {cpus.worker})  # taskset -p
    os.sched_setaffinity(other, {cpus.generator})
    softirqd = ksoftirqd(cpus.worker)
    first = previous = snapshot(vpn, lab, direction, worker)
    runs = []
    for _ in range(repeat):
        before = sharing(softirqd, cpus.worker)  # while the traffic flows; the snapshots wait for counters to settle
        sent, elapsed = flood(lab, seconds, cpus.generator)
        wall, softirqd_cpu, busy = (b - a for a, b in zip(before, sharing(softirqd, cpus.worker), strict=True))
        latest = snapshot(vpn, lab, direction, worker)
        delta = latest - previous
        previous = latest
        processed = delta.encrypted if direction is ENCRYPT else delta.decrypted
        offered = delta.tun_read + delta.tun_dropped
        runs.append(
            Run(
                sent / elapsed,
                offered / elapsed,
                processed / elapsed,
                100 * delta.tun_dropped / offered if offered else 0.0,
                delta.worker_cpu / elapsed,
                softirqd_cpu / wall,
                busy / wall,
                1e6 * delta.worker_cpu / processed if processed else float("inf"),
            )
        )
    if worker_pid(lab, direction.member) != worker:
        raise RuntimeError(f"gm{direction.member}'s worker was replaced during the runs: its CPU times do not add up")
    median = Run(*(benchlib.median([getattr(r, f.name) for r in runs]) for f in fields(Run)))
    return median, proof(direction, previous - first, repeat, worker, cpus.worker)


def proof(direction: Direction, total: Snapshot, runs: int, worker: int, cpu: int) -> list[str]:
    """Lines saying whether the counted packets crossed the measured worker (``FAILED`` when not)."""
    slack = SLACK_PER_RUN * runs

    def close(a: int, b: int) -> bool:
        return abs(a - b) <= slack

    t = total
    offered = t.tun_read + t.tun_dropped
    if direction is ENCRYPT:
        checks = [
            (
                t.encrypted > 0 and close(t.tun_read, t.encrypted),
                (f"gm1's worker read {t.tun_read:,} packets from its TUN queue and encrypted {t.encrypted:,}; "
                 f"the queue dropped {t.tun_dropped:,}"),
            ),
            (
                close(t.wan_from_gm1, t.encrypted),
                f"the WAN router received {t.wan_from_gm1:,} packets from gm1 (discarded by its blackhole route)",
            ),
            (t.h2_received <= slack, f"h2 received {t.h2_received:,} (the discarded ESP reached nobody)"),
        ]  # fmt: skip
    else:
        checks = [
            (
                t.encrypted > 0 and close(t.wan_to_gm2, t.encrypted),
                f"gm1 encrypted {t.encrypted:,} packets; the WAN router forwarded {t.wan_to_gm2:,} to gm2",
            ),
            (
                close(offered, t.wan_to_gm2),
                (f"gm2's inbound TUN queue took {offered:,}: its worker read {t.tun_read:,}, "
                 f"the queue dropped {t.tun_dropped:,}"),
            ),
            (
                t.decrypted > 0 and close(t.h2_received, t.decrypted),
                f"gm2's worker decrypted {t.decrypted:,}; h2 received {t.h2_received:,}",
            ),
        ]  # fmt: skip
    label = f"{direction.name} (gm{direction.member}'s worker, PID {worker}, CPU {cpu}), {runs} runs"
    return [f"{'' if ok else 'FAILED '}{label}: {text}" for ok, text in checks]


def wan_proof(vpn: GroupVpn, esp: str) -> str:
    lines = vpn.wan_esp()
    esp_lines = [line for line in lines if " ESP(" in line]
    ok = len(lines) > 0 and len(esp_lines) == len(lines)
    example = f", e.g. {esp_lines[0].split(' ', 1)[1]}" if esp_lines else ""
    counted = f"{len(esp_lines)} of {len(lines)} packets of h1<->h2 pings on the WAN are ESP"
    return f"{'' if ok else 'FAILED '}{esp}: {counted}{example}"


# -- report -----------------------------------------------------------------------------


def render(baseline: Plain, results: dict[tuple[str, str], Run], cpus: Cpus) -> str:
    headers = [
        "suite", "direction", "generator pkt/s", "offered to worker pkt/s",
        "encrypted/decrypted (plain: delivered) pkt/s", "TUN drops %", "worker CPU", "µs CPU/packet",
        "packets per CPU-second", f"ksoftirqd/{cpus.worker} CPU", f"CPU {cpus.worker} busy", "pkt/s vs plain",
    ]  # fmt: skip
    rows = [
        ["plain routed (no VPN)", "h1 -> h2", f"{baseline.generated:,.0f}", "-", f"{baseline.delivered:,.0f}",
         "-", "-", "-", "-", "-", "-", benchlib.ratio(baseline.delivered, baseline.delivered)],
    ]  # fmt: skip
    for (esp, direction), r in results.items():
        rows.append(
            [
                esp,
                direction,
                f"{r.generated:,.0f}",
                f"{r.offered:,.0f}",
                f"{r.processed:,.0f}",
                f"{r.loss:.1f}",
                f"{r.cpu:.2f}",
                f"{r.us_per_packet:.2f}",
                f"{r.per_cpu_second:,.0f}",
                f"{r.softirqd:.2f}",
                f"{r.busy:.2f}",
                benchlib.ratio(r.processed, baseline.delivered),
            ]
        )
    return benchlib.table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=4, help="length of each generator run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is reported")
    parser.add_argument(
        "--esp", action="append", choices=sorted(ESP_SUITES), help=f"ESP suite (default {', '.join(DEFAULT_ESP)})"
    )
    args = parser.parse_args()
    benchlib.require_root()
    for tool in ("tcpdump", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"worker_rate.py needs {tool}")
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        sys.exit("worker_rate.py needs two CPUs: one for the measured worker, one for the rest")
    cpus = Cpus(generator=available[0], worker=available[-1])

    # SIGTERM unwinds like Ctrl-C, so the namespaces are removed either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"terminated (signal {signal.SIGTERM})"))
    conditions = benchlib.machine()
    workdir = Path(tempfile.mkdtemp(prefix="gvworker-", dir="/tmp"))
    lab = Lab(f"gvw{os.getpid() % 100000}-", members=2)
    results: dict[tuple[str, str], Run] = {}
    proofs: list[str] = []
    finished = False
    try:
        create(workdir / "lab", lab)
        baseline = plain(lab, args.seconds, args.repeat, cpus)
        for esp in args.esp or DEFAULT_ESP:
            with GroupVpn(workdir / "lab", lab, esp, MEMBER_OPTIONS) as vpn:
                proofs.append(wan_proof(vpn, esp))
                for direction in (ENCRYPT, DECRYPT):
                    with discarded_at_wan(lab) if direction is ENCRYPT else nullcontext():
                        run, lines = measure(vpn, lab, direction, args.seconds, args.repeat, cpus)
                    results[esp, direction.name] = run
                    proofs += lines
        finished = True
    finally:
        remove(workdir / "lab", lab.prefix)
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"the daemons' logs and configurations are kept in {workdir / 'lab'}", file=sys.stderr)

    print("\n".join(conditions))
    print(f"load average at end {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    print(f"command: python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"each cell: median of {args.repeat} runs of {args.seconds} s; one flow of 64-octet IPv4/UDP packets h1 -> h2 "
        f"from bench/{FLOOD.name} on CPU {cpus.generator}; members {' '.join(MEMBER_OPTIONS)}"
    )
    print(
        f"the measured worker pinned to CPU {cpus.worker}, the other member's worker to CPU {cpus.generator} "
        "(sched_setaffinity on their PIDs, as taskset -p); other jobs on the machine not moved"
    )
    print("encrypt: gm1's worker; the WAN router discards the ESP (blackhole route to h2's LAN), gm2 does no work")
    print(f"decrypt: gm2's worker; gm1's worker encrypts on CPU {cpus.generator}, beside the generator")
    print(
        "worker CPU: utime+stime (/proc/PID/stat) per second, including the TUN syscalls and the softirq work done in "
        f"its context; ksoftirqd/{cpus.worker}: softirq work deferred on its CPU, not in the worker's figure; "
        f"CPU {cpus.worker} busy: all tasks and interrupts on it (/proc/stat), busy minus worker is other jobs; "
        "packets per CPU-second = 10^6 / µs CPU per packet, a lower bound when the worker was offered less than it "
        "takes or shared its CPU (it then wakes for fewer packets at a time)"
    )
    print(*proofs, sep="\n")
    print()
    print(render(baseline, results, cpus))
    verdicts = [
        f"{esp} {direction} {r.per_cpu_second:,.0f} ({'met' if r.per_cpu_second >= TARGET_PPS else 'not met'})"
        for (esp, direction), r in results.items()
    ]
    print(f"\nissue 6 target, one worker >= {TARGET_PPS:,} packets/s with a CPU to itself (packets per CPU-second): "
          + "; ".join(verdicts))  # fmt: skip
    return 1 if any(line.startswith("FAILED") for line in proofs) else 0


if __name__ == "__main__":
    sys.exit(main())
