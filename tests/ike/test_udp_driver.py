"""The asyncio UDP driver running both cores over loopback, with real (short) timers."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address

from groupvpn.ike import (
    DeleteReason,
    FailureReason,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    Phase1Initiator,
    Phase1Responder,
    PskStore,
    RetransmitPolicy,
    Suite,
)
from groupvpn.runtime.udp import UdpDriver
from groupvpn.wire.isakmp import Identification
from phase1_link import PSK

LOOPBACK = "127.0.0.1"
SUITES = [Suite.parse("aes128-sha256-modp2048")]
ID = Identification.of(IPv4Address(LOOPBACK))


def test_main_mode_and_delete_over_loopback() -> None:
    async def scenario() -> None:
        responder = await UdpDriver.open(Phase1Responder(PskStore.single(PSK), SUITES, ID), (LOOPBACK, 0))
        initiator_core = Phase1Initiator(responder.local, PSK, SUITES, ID)
        initiator = await UdpDriver.open(initiator_core, (LOOPBACK, 0))
        try:
            initiator.step(initiator_core.start)
            ours = await initiator.next_event(5.0)
            theirs = await responder.next_event(5.0)
            assert isinstance(ours, IkeSaEstablished) and isinstance(theirs, IkeSaEstablished)
            assert ours.sa.keys == theirs.sa.keys and theirs.sa.peer == initiator.local
            initiator.step(initiator_core.delete)
            gone = await responder.next_event(5.0)
            assert isinstance(gone, IkeSaDeleted) and gone.reason is DeleteReason.PEER
        finally:
            initiator.close()
            responder.close()

    asyncio.run(scenario())


def test_retransmission_timer_fires_and_gives_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((LOOPBACK, 0))  # bound but never read: datagrams vanish without ICMP errors
        peer = silent.getsockname()

        async def scenario() -> None:
            policy = RetransmitPolicy(initial=0.02, factor=2.0, maximum=0.05, attempts=3)
            core = Phase1Initiator(peer, PSK, SUITES, ID, retransmit=policy)
            driver = await UdpDriver.open(core, (LOOPBACK, 0))
            try:
                driver.step(core.start)
                failed = await driver.next_event(5.0)
                assert isinstance(failed, IkeSaFailed) and failed.reason is FailureReason.NO_RESPONSE
                assert failed.message == f"no response from {LOOPBACK} after 3 attempts"
            finally:
                driver.close()

        asyncio.run(scenario())
        received = 0
        silent.setblocking(False)
        while True:
            try:
                silent.recv(2048)
            except BlockingIOError:
                break
            received += 1
        assert received == 3
