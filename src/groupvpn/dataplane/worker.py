"""The packet path process: one per CPU, each on its own queue of the two TUN devices.

An epoll loop (not asyncio: lab-notes/perf-baseline.md §3a) waits on the
outbound queue (LAN traffic steered in: policy lookup, then ESP, clear or
drop), the inbound queue (the group's ESP steered in from the WAN:
reassembly, decryption) and the channel from the manager.  Each wake-up
drains up to ``batch`` packets per queue; results are written back to the
TUN and the kernel routes them by their (preserved) addresses; IPv4
multicast ones leave through raw sockets instead (``multicast``).  With
``offload`` the inbound queue speaks virtio_net_hdr and a batch's
decrypted packets are written at its end, each flow's TCP segments joined
into GSO packets (``offload.Coalescer``).  Nothing is logged on the packet
path: every outcome is a counter, and counters count inner packets, not
writes.

A new ``PolicyState`` is built completely (SAs, policy, accepted SPIs)
before it replaces the old one between two batches, so every packet sees
one whole policy.  SA contexts are prepared once: an SA whose
configuration is unchanged keeps its context, sequence number and IV
counter across updates.

Counter-mode IVs must never repeat under one key, yet every worker
encrypts with the same group SAs.  Each worker therefore draws from its
own slice of the member's IV space: the worker index is appended to the
member's Sender ID bits (RFC 6054 §3: SID | SSIV becomes SID | worker |
counter), and a worker keeps its counter for an SPI and SID for its whole
life, even across updates that drop the SA and bring it back.

Run as ``python -m groupvpn.dataplane.worker --channel FD --outbound FD
--inbound FD`` by the manager, which passes the fds; the setup arrives as
the channel's first message.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence

from ..crypto.errors import CryptoError
from ..crypto.suites import CounterIvSource
from . import DropCounters, DropReason
from .channel import (
    ChannelError,
    Counter,
    PolicyState,
    Ready,
    Rejected,
    Report,
    ReportRequest,
    WorkerSetup,
    encode,
    receive,
    send,
)
from .esp_path import Decapsulator, Encapsulator, EspSa, IvSource, SaConfig
from .multicast import MulticastOutput
from .offload import PLAIN_READS, VNET_HEADER_SIZE, Coalescer
from .reassembly import Reassembler
from .spd import Spd

SETUP_TIMEOUT = 30.0


class Worker:
    """One worker's state and packet loop over its two TUN queue fds and its channel end."""

    def __init__(
        self,
        setup: WorkerSetup,
        channel: socket.socket,
        outbound_fd: int,
        inbound_fd: int,
        multicast: MulticastOutput | None = None,
    ) -> None:
        self.setup = setup
        self.multicast = multicast
        self.channel = channel
        self.outbound_fd = outbound_fd
        self.inbound_fd = inbound_fd
        self.read_size = setup.mtu
        self.coalescer = Coalescer() if setup.offload else None
        self.inbound_size = setup.mtu + (VNET_HEADER_SIZE if setup.offload else 0)
        self.counts = [0] * len(Counter)
        self.drops = DropCounters()
        self.reassembler = Reassembler(drops=self.drops)
        self.decapsulator = Decapsulator(drops=self.drops, reassembler=self.reassembler)
        self.encapsulator = Encapsulator(
            self._spd(PolicyState(-1)),
            setup.mtu,
            drops=self.drops,
            icmp_source_v4=setup.icmp_source_v4,
            icmp_source_v6=setup.icmp_source_v6,
        )
        self.version = -1
        self._sas: dict[SaConfig, EspSa] = {}
        self._ivs: dict[tuple[int, int, int], IvSource] = {}  # (SPI, SID, SID bits) -> this worker's counter
        self._worker_bits = (setup.workers - 1).bit_length()

    # -- policy ---------------------------------------------------------------------

    def _spd(self, state: PolicyState) -> Spd:
        spd = Spd(state.rules, bypass=self.setup.bypass, fail_open=self.setup.fail_open_rules)
        spd.fail_open = state.fail_open
        return spd

    def _sa(self, config: SaConfig) -> EspSa:
        sa = self._sas.get(config)
        if sa is not None:
            return sa
        if not config.suite.counter_mode:
            return EspSa(config)
        key = (config.spi, config.sid, config.sid_bits)
        iv_source = self._ivs.get(key)
        if iv_source is None:
            bits = self._worker_bits
            iv_source = CounterIvSource(config.sid << bits | self.setup.index, config.sid_bits + bits)
            self._ivs[key] = iv_source
        return EspSa(config, iv_source)

    def apply(self, state: PolicyState) -> None:
        """Build ``state`` whole, then swap it in; on any error the old policy stays untouched."""
        sas = {config: self._sa(config) for config in state.sas}
        by_spi = {sa.spi: sa for sa in sas.values()}
        spd = self._spd(state)
        for rule, spi in state.encrypting.items():
            spd.set_sa(rule, by_spi[spi])
        self.decapsulator.install(sas.values())
        self.encapsulator.spd = spd
        self._sas = sas
        self.version = state.version

    # -- packets ----------------------------------------------------------------------

    def drain_outbound(self, now: float) -> int:
        """Read up to ``batch`` LAN packets and write back their ESP (or clear) packets; how many were read."""
        fd, size, read, write = self.outbound_fd, self.read_size, os.read, os.write
        process = self.encapsulator.process
        out: list[bytes] = []
        packets = octets = encrypted = protected = clear = 0
        for _ in range(self.setup.batch):
            try:
                packet = read(fd, size)
            except BlockingIOError:
                break
            packets += 1
            octets += len(packet)
            before = len(out)
            if process(packet, now, out) is None:
                if out[-1] is packet:
                    clear += 1
                else:
                    encrypted += len(out) - before
                    protected += len(packet)
        errors = 0
        multicast = self.multicast
        for packet in out:
            try:
                # IPv4 to 224.0.0.0/4, tested inline: a call per packet costs more than the test
                if multicast is not None and 0xE0 <= packet[16] < 0xF0 and packet[0] >> 4 == 4:
                    multicast.to_wan(packet)
                else:
                    write(fd, packet)
            except OSError:
                errors += 1
        counts = self.counts
        counts[Counter.OUTBOUND_PACKETS] += packets
        counts[Counter.OUTBOUND_BYTES] += octets
        counts[Counter.ENCRYPTED_PACKETS] += encrypted
        counts[Counter.ENCRYPTED_BYTES] += protected
        counts[Counter.CLEAR_PACKETS] += clear
        counts[Counter.WRITE_ERRORS] += errors
        return packets

    def drain_inbound(self, now: float) -> int:
        """Read up to ``batch`` ESP packets from the WAN and write back what decrypts; how many were read."""
        fd, size, read, write = self.inbound_fd, self.inbound_size, os.read, os.write
        process = self.decapsulator.process
        multicast = self.multicast
        coalescer = self.coalescer
        packets = octets = decrypted = delivered = errors = 0
        for _ in range(self.setup.batch):
            try:
                packet = read(fd, size)
            except BlockingIOError:
                break
            packets += 1
            if coalescer is not None:
                head, packet = packet[:VNET_HEADER_SIZE], packet[VNET_HEADER_SIZE:]
                if head not in PLAIN_READS:
                    octets += len(packet)
                    self.drops.add(DropReason.VNET_HEADER)
                    continue
            octets += len(packet)
            inner = process(packet, now)
            if type(inner) is bytes:
                try:
                    if multicast is not None and 0xE0 <= inner[16] < 0xF0 and inner[0] >> 4 == 4:  # IPv4 multicast
                        multicast.to_lan(inner)
                    elif coalescer is not None:
                        coalescer.push(inner)  # written and counted at the end of the batch
                        continue
                    else:
                        write(fd, inner)
                except OSError:
                    errors += 1
                    continue
                decrypted += 1
                delivered += len(inner)
        if coalescer is not None:
            for data, joined, inner_octets in coalescer.flush():
                try:
                    write(fd, data)
                except OSError:
                    errors += joined
                    continue
                decrypted += joined
                delivered += inner_octets
        counts = self.counts
        counts[Counter.INBOUND_PACKETS] += packets
        counts[Counter.INBOUND_BYTES] += octets
        counts[Counter.DECRYPTED_PACKETS] += decrypted
        counts[Counter.DECRYPTED_BYTES] += delivered
        counts[Counter.WRITE_ERRORS] += errors
        return packets

    # -- channel ----------------------------------------------------------------------

    def report(self, serial: int = 0) -> Report:
        return Report(self.setup.index, serial, self.version, tuple(self.counts), tuple(self.drops.counts))

    def handle_channel(self) -> bool:
        """Act on every waiting message; False once the manager has closed the channel."""
        while True:
            try:
                message = receive(self.channel)
            except EOFError:
                return False
            if message is None:
                return True
            if isinstance(message, PolicyState):
                try:
                    self.apply(message)
                except (ValueError, CryptoError) as problem:
                    send(self.channel, encode(Rejected(self.setup.index, message.version, str(problem))))
            elif isinstance(message, ReportRequest):
                send(self.channel, encode(self.report(message.serial)))

    def run(self) -> None:
        """The loop: packets first, the channel between batches, a report every ``report_interval``."""
        poller = select.epoll()
        outbound, inbound, channel = self.outbound_fd, self.inbound_fd, self.channel.fileno()
        for fd in (outbound, inbound, channel):
            poller.register(fd, select.EPOLLIN)
        interval = self.setup.report_interval
        next_report = time.monotonic() + interval
        try:
            while True:  # ends when the manager closes the channel
                for fd, _ in poller.poll(max(0.0, next_report - time.monotonic())):
                    if fd == outbound:
                        self.drain_outbound(time.time())
                    elif fd == inbound:
                        self.drain_inbound(time.time())
                    elif not self.handle_channel():
                        return
                if time.monotonic() >= next_report:
                    self.reassembler.expire(time.time())
                    send(self.channel, encode(self.report()))  # dropped when the manager is not reading
                    next_report = time.monotonic() + interval
        except ChannelError:
            return  # the manager is gone
        finally:
            poller.close()


def _await_setup(channel: socket.socket) -> WorkerSetup:
    ready, _, _ = select.select([channel], [], [], SETUP_TIMEOUT)
    message = receive(channel) if ready else None
    if not isinstance(message, WorkerSetup):
        raise SystemExit(f"groupvpn dataplane worker: expected the setup, got {type(message).__name__}")
    return message


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m groupvpn.dataplane.worker")
    parser.add_argument("--channel", type=int, required=True)
    parser.add_argument("--outbound", type=int, required=True, help="outbound TUN queue fd")
    parser.add_argument("--inbound", type=int, required=True, help="inbound TUN queue fd")
    parser.add_argument("--multicast-wan", type=int, help="raw socket fd out of the WAN (multicast.open_senders)")
    parser.add_argument("--multicast-lan", type=int, nargs="*", default=[], help="raw socket fds out of the LANs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the manager decides when workers end
    channel = socket.socket(fileno=args.channel)
    setup = _await_setup(channel)
    if setup.cpu is not None:
        os.sched_setaffinity(0, {setup.cpu})
    multicast = None
    if args.multicast_wan is not None:
        lan = [socket.socket(fileno=fd) for fd in args.multicast_lan]
        multicast = MulticastOutput(socket.socket(fileno=args.multicast_wan), lan)
    worker = Worker(setup, channel, args.outbound, args.inbound, multicast)
    send(channel, encode(Ready(setup.index)))
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
