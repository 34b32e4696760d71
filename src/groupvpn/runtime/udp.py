"""A UDP socket and one timer feeding a sans-IO core (asyncio).

The core decides everything; this driver only moves octets and time: it
hands each datagram to ``core.receive``, calls ``core.handle_timer`` when
the deadline the core last returned arrives, sends what comes back and
queues the events.  The clock is the event loop's monotonic ``time()``, so
deadlines map directly onto ``call_at``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

from ..ike.events import Event, Output
from ..ike.sa import Address


class Core(Protocol):
    def receive(self, datagram: bytes, addr: Address, now: float) -> Output: ...

    def handle_timer(self, now: float) -> Output: ...


class UdpDriver(asyncio.DatagramProtocol):
    """Runs ``core`` on one socket; read events with ``next_event``."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.send_errors = 0
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(cls, core: Core, local: Address) -> UdpDriver:
        """Bind ``local`` (port 0: any) and start feeding ``core``."""
        _, driver = await asyncio.get_running_loop().create_datagram_endpoint(lambda: cls(core), local_addr=local)
        return driver

    @property
    def local(self) -> Address:
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port

    def now(self) -> float:
        return self._loop.time()

    def step(self, action: Callable[[float], Output]) -> None:
        """Run one core call (``start``, ``delete``...) now and carry out its output."""
        self._apply(action(self.now()))

    async def next_event(self, timeout: float) -> Event:
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

    def _apply(self, out: Output) -> None:
        assert self._transport is not None
        for datagram in out.datagrams:
            self._transport.sendto(datagram.data, datagram.addr)
        for event in out.events:
            self.events.put_nowait(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if out.timer is not None:
            self._timer = self._loop.call_at(out.timer, self._on_timer)
