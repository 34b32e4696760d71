"""``groupvpn ike test``: one Phase 1 against a peer, reported, then deleted.

Exit status: 0 established, 2 authentication failed, 3 no proposal chosen,
4 no response, 1 anything else (including configuration errors).  Output
names algorithms, lifetime, cookies and timing; never key material.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from ..ike.events import FailureReason
from ..ike.proposals import ProposalError, Suite
from ..ike.psk import PreSharedKey, PskError
from ..ike.retransmit import RetransmitPolicy
from ..runtime.ike_test import IkeTestResult, ike_test
from ..wire.numbers import DOI, GDOI_PORT, name_of

EXIT_STATUS = {
    None: 0,
    FailureReason.AUTHENTICATION_FAILED: 2,
    FailureReason.NO_PROPOSAL_CHOSEN: 3,
    FailureReason.NO_RESPONSE: 4,
}
EXIT_OTHER = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ike = subparsers.add_parser("ike", help="IKEv1 Phase 1 tools")
    commands = ike.add_subparsers(dest="ike_command", metavar="COMMAND", required=True)
    test = commands.add_parser(
        "test",
        help="perform Main Mode against a peer, report the SA, delete it",
        description="Exit status: 0 established, 2 authentication failed, 3 no proposal chosen, 4 no response, 1 other.",
    )
    test.add_argument("--peer", required=True, help="peer address")
    test.add_argument("--port", type=int, default=GDOI_PORT, help="peer UDP port (default %(default)s)")
    test.add_argument("--psk-file", required=True, type=Path, help="file holding the pre-shared key (one line)")
    test.add_argument(
        "--proposal",
        action="append",
        help="cipher-hash-group, e.g. aes128-sha256-modp2048; repeat or comma-separate to offer several in order",
    )
    test.add_argument("--lifetime", type=int, default=86400, help="offered IKE SA lifetime in seconds")
    test.add_argument("--doi", type=int, choices=(DOI.IPSEC, DOI.GDOI), default=DOI.GDOI, help="Phase 1 SA DOI")
    test.add_argument("--local", help="local address to bind and use as our ID (default: route to the peer)")
    test.add_argument("--source-port", type=int, default=0, help="local UDP port (default: any)")
    test.add_argument("--attempts", type=int, default=5, help="transmissions per message before giving up")
    test.add_argument("--dpd", action="store_true", help="also check the SA with one DPD R-U-THERE round trip")
    test.add_argument("--json", action="store_true", help="machine-readable output")
    test.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        psk = PreSharedKey.from_text(args.psk_file.read_text())
        names = [n for item in args.proposal or ["aes128-sha256-modp2048"] for n in item.split(",")]
        suites = [Suite.parse(n, lifetime=args.lifetime) for n in names]
        policy = RetransmitPolicy(attempts=args.attempts)
    except (OSError, PskError, ProposalError, ValueError) as err:
        print(f"groupvpn ike test: configuration error: {err}", file=sys.stderr)
        return EXIT_OTHER
    result = asyncio.run(
        ike_test(
            (args.peer, args.port),
            psk,
            suites,
            local_host=args.local,
            source_port=args.source_port,
            doi=args.doi,
            dpd_check=args.dpd,
            retransmit=policy,
        )
    )
    print(json.dumps(as_dict(result), indent=2) if args.json else as_text(result))
    return EXIT_STATUS.get(result.failure, EXIT_OTHER)


def as_dict(result: IkeTestResult) -> dict[str, object]:
    out: dict[str, object] = {
        "peer": f"{result.peer[0]}:{result.peer[1]}",
        "local": f"{result.local[0]}:{result.local[1]}",
        "elapsed_seconds": round(result.elapsed, 6),
        "exit_status": EXIT_STATUS.get(result.failure, EXIT_OTHER),
    }
    sa = result.sa
    if sa is None:
        reason = result.failure.value if result.failure else "failed"
        return {"result": "failed", "reason": reason, "message": result.message, **out}
    suite = sa.suite
    return {
        "result": "established",
        **out,
        "proposal": suite.name,
        "encryption": suite.encryption.name,
        "key_length": suite.key_length,
        "hash": suite.hash.name,
        "dh_group": suite.group.name,
        "lifetime_seconds": suite.lifetime,
        "doi": name_of(DOI, sa.doi),
        "initiator_cookie": sa.icookie.hex(),
        "responder_cookie": sa.rcookie.hex(),
        "peer_id": sa.peer_identity.describe()["data"],
        "peer_supports_dpd": sa.peer_supports_dpd,
        "dpd_round_trip_seconds": None if result.dpd_round_trip is None else round(result.dpd_round_trip, 6),
        "deleted": result.deleted,
    }


def as_text(result: IkeTestResult) -> str:
    info = as_dict(result)
    if result.sa is None:
        return f"FAILED: {result.message} (after {info['elapsed_seconds']} s)"
    lines = [
        f"IKE SA established with {info['peer']} in {info['elapsed_seconds']} s",
        f"  proposal   {info['proposal']} (DOI {info['doi']})",
        f"  lifetime   {info['lifetime_seconds']} s",
        f"  cookies    {info['initiator_cookie']} (initiator) {info['responder_cookie']} (responder)",
        f"  local      {info['local']}, peer ID {info['peer_id']}",
        f"  DPD        {'supported' if info['peer_supports_dpd'] else 'not announced'} by the peer",
    ]
    if result.dpd_checked:
        rtt = info["dpd_round_trip_seconds"]
        lines.append(f"  DPD check  {'no acknowledgement' if rtt is None else f'R-U-THERE acknowledged in {rtt} s'}")
    lines.append("  deleted    informational DELETE sent" if result.deleted else "  deleted    SA was already gone")
    return "\n".join(lines)
