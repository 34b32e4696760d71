"""Small IPv4/UDP packets as fast as one process can send them, for a fixed time: a load that needs no receiver.

iperf3 needs its TCP control connection to come back, so it cannot load a
path whose far end is cut (``worker_rate.py`` discards ESP at the WAN
router to give the encrypting worker a CPU of its own).  This sends one
flow of ``--payload``-octet datagrams (36: 64-octet IPv4 packets) from a
connected socket until ``--seconds`` have passed, then prints what it sent
as JSON.  Run it in the sender's namespace: ``ip netns exec NS python
bench/udpflood.py 198.19.2.2``.  A send refused by an ICMP error from the far
end (nothing listens on the discard port) is counted, not fatal.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

CHECK_EVERY = 1024  # sends between two looks at the clock


def flood(destination: str, port: int, payload: int, seconds: float) -> dict[str, float]:
    data = bytes(payload)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((destination, port))
        send = sock.send
        sent = refused = 0
        start = time.monotonic()
        deadline = start + seconds
        while time.monotonic() < deadline:
            for _ in range(CHECK_EVERY):
                try:
                    send(data)
                except ConnectionRefusedError:
                    refused += 1
            sent += CHECK_EVERY
        elapsed = time.monotonic() - start
    return {"sent": sent - refused, "refused": refused, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("destination", help="IPv4 address to send to")
    parser.add_argument("--port", type=int, default=9, help="UDP destination port (default 9, discard)")
    parser.add_argument("--payload", type=int, default=36, help="UDP payload octets (default 36: 64-octet packets)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to send")
    args = parser.parse_args()
    print(json.dumps(flood(args.destination, args.port, args.payload, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
