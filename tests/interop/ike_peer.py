"""Test-only IKE peer: our sans-IO cores on the real UDP driver, reporting as JSON lines.

``respond`` runs ``Phase1Responder`` until SIGTERM or ``--seconds``;
``initiate`` runs one ``Phase1Initiator`` exchange and deletes the SA.
Unlike ``groupvpn ike test`` this prints the derived keys (SKEYID family and
cipher key) so interop tests can compare them with what charon logs; it is
for lab keys only.  Run it inside a namespace with ``ip netns exec``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from ipaddress import ip_address
from pathlib import Path

from groupvpn.ike import (
    IkeSa,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    NotifyReceived,
    PeerAlive,
    Phase1Initiator,
    Phase1Responder,
    PreSharedKey,
    PskStore,
    RetransmitPolicy,
    Suite,
)
from groupvpn.ike.events import Event
from groupvpn.runtime.udp import UdpDriver
from groupvpn.wire.isakmp import Identification
from groupvpn.wire.numbers import NotifyType, name_of


def emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


def keys(sa: IkeSa) -> dict[str, str]:
    """The values charon dumps at ``ike = 4``, under charon's labels."""
    return {
        "SKEYID": sa.keys.skeyid.hex(),
        "SKEYID_d": sa.skeyid_d.hex(),
        "SKEYID_a": sa.skeyid_a.hex(),
        "SKEYID_e": sa.skeyid_e.hex(),
        "encryption key Ka": sa.cipher_key.hex(),
    }


def describe(event: Event) -> dict[str, object]:
    if isinstance(event, IkeSaEstablished):
        sa = event.sa
        return {
            "event": "established",
            "peer": list(sa.peer),
            "suite": sa.suite.name,
            "doi": int(sa.doi),
            "icookie": sa.icookie.hex(),
            "rcookie": sa.rcookie.hex(),
            "keys": keys(sa),
        }
    if isinstance(event, IkeSaFailed):
        return {"event": "failed", "peer": list(event.peer), "reason": event.reason.name, "message": event.message}
    if isinstance(event, IkeSaDeleted):
        return {"event": "deleted", "icookie": event.sa.icookie.hex(), "reason": event.reason.name}
    if isinstance(event, NotifyReceived):
        return {"event": "notify", "type": name_of(NotifyType, event.notify_type), "protected": event.sa is not None}
    assert isinstance(event, PeerAlive)
    return {"event": "alive", "sequence": event.sequence}


async def respond(args: argparse.Namespace, psk: PreSharedKey, suites: list[Suite]) -> None:
    identity = Identification.of(ip_address(args.address))
    core = Phase1Responder(PskStore.single(psk), suites, identity)
    driver = await UdpDriver.open(core, (args.address, args.port))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    emit({"event": "ready", "address": args.address, "port": driver.local[1]})
    deadline = driver.now() + args.seconds
    try:
        while not stop.is_set() and driver.now() < deadline:
            with contextlib.suppress(asyncio.TimeoutError):
                emit(describe(await driver.next_event(min(0.2, max(deadline - driver.now(), 0.01)))))
    finally:
        emit({"event": "stats", "stats": dict(core.stats)})
        driver.close()


async def initiate(args: argparse.Namespace, psk: PreSharedKey, suites: list[Suite]) -> int:
    identity = Identification.of(ip_address(args.address))
    core = Phase1Initiator((args.peer, args.port), psk, suites, identity, doi=args.doi, retransmit=RetransmitPolicy(attempts=2))
    driver = await UdpDriver.open(core, (args.address, 0))
    try:
        driver.step(core.start)
        event = await driver.next_event(10.0)
        emit(describe(event))
        if not isinstance(event, IkeSaEstablished):
            return 1
        driver.step(core.delete)
        await asyncio.sleep(0)
        return 0
    finally:
        driver.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=("respond", "initiate"))
    parser.add_argument("--address", required=True, help="our address (bound, and our ID)")
    parser.add_argument("--port", type=int, required=True, help="respond: port to listen on; initiate: peer port")
    parser.add_argument("--peer", help="initiate: peer address")
    parser.add_argument("--psk-file", type=Path, required=True)
    parser.add_argument("--proposal", action="append", required=True)
    parser.add_argument("--doi", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0, help="respond: exit after this long")
    args = parser.parse_args()
    psk = PreSharedKey.from_text(args.psk_file.read_text())
    suites = [Suite.parse(p) for p in args.proposal]
    if args.role == "respond":
        asyncio.run(respond(args, psk, suites))
        return 0
    return asyncio.run(initiate(args, psk, suites))


if __name__ == "__main__":
    sys.exit(main())
