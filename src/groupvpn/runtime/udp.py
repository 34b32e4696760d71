"""A UDP socket and one timer feeding a sans-IO core (asyncio).

The core decides everything; this driver only moves octets and time: it
hands each datagram to ``core.receive``, calls ``core.handle_timer`` when
the deadline the core last returned arrives, sends what comes back and
queues the events.  The clock is the event loop's monotonic ``time()``
unless the core keeps durable times and needs the wall clock (the key
server): deadlines are in the core's clock and armed as delays from now.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from ..ike.events import Datagram
from ..ike.sa import Address

Clock = Callable[[], float]


class CoreOutput(Protocol):
    """What every core call returns: datagrams to send, one timer deadline, events."""

    @property
    def datagrams(self) -> Sequence[Datagram]: ...

    @property
    def timer(self) -> float | None: ...

    @property
    def events(self) -> Sequence[Any]: ...


class Core(Protocol):
    def receive(self, datagram: bytes, addr: Address, now: float) -> CoreOutput: ...

    def handle_timer(self, now: float) -> CoreOutput: ...


class UdpDriver(asyncio.DatagramProtocol):
    """Runs ``core`` on one socket; read events with ``next_event``."""

    def __init__(self, core: Core, clock: Clock | None = None) -> None:
        self.core = core
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.send_errors = 0
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(
        cls, core: Core, local: Address | None = None, *, sock: socket.socket | None = None, clock: Clock | None = None
    ) -> UdpDriver:
        """Bind ``local`` (port 0: any), or take the bound ``sock``, and start feeding ``core``."""
        _, driver = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: cls(core, clock), local_addr=local, sock=sock
        )
        return driver

    @property
    def local(self) -> Address:
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port

    def now(self) -> float:
        return self._clock()

    def step(self, action: Callable[[float], CoreOutput]) -> None:
        """Run one core call (``start``, ``delete``...) now and carry out its output."""
        self._apply(action(self.now()))

    async def next_event(self, timeout: float) -> Any:
        return await asyncio.wait_for(self.events.get(), timeout)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()

    # -- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's datagram transport does not subclass DatagramTransport (3.11), hence the cast.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.step(lambda now: self.core.receive(data, (addr[0], addr[1]), now))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) on an unconnected socket: the core's
        # retransmission timer already covers an unreachable peer.
        self.send_errors += 1

    def _on_timer(self) -> None:
        self._timer = None
        self.step(self.core.handle_timer)

    def _apply(self, out: CoreOutput) -> None:
        assert self._transport is not None
        for datagram in out.datagrams:
            self._transport.sendto(datagram.data, datagram.addr)
        for event in out.events:
            self.events.put_nowait(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if out.timer is not None:
            self._timer = self._loop.call_later(max(0.0, out.timer - self.now()), self._on_timer)
