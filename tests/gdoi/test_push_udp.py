"""One GROUPKEY-PUSH and its acknowledgement over real UDP sockets between two OS processes on 127.0.0.1.

The key server and the member each run in their own ``python`` process
(the functions below, started with ``-c``), with kernel-chosen ports.
They share only what a registration would have given the member: the
KEK (gdoi_support's deterministic reference KEK) and the key server's
public signing key, which the test hands over on stdin.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from ipaddress import ip_address
from pathlib import Path

import pytest

from gdoi_support import GROUP, KEK_SPI, group_policy, group_sa, kek_keys, kek_policy
from groupvpn.crypto.sig import SigningKey, VerifyingKey
from groupvpn.gdoi import KekKeys, KekPolicy
from groupvpn.gdoi.ack import AckReceived, AckVerifier
from groupvpn.gdoi.push import PushAccepted, PushPayloads, PushReceiver, build_push
from groupvpn.wire.numbers import SigAlgorithm, SigHashAlgorithm

LOOPBACK = "127.0.0.1"
SOCKET_TIMEOUT = 10.0
PROCESS_TIMEOUT = 60.0
HERE = Path(__file__).resolve().parent


def _emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


def rsa_policy() -> KekPolicy:
    """The reference rekey SA, signed with 2048-bit RSA and SHA-256, acks requested."""
    return kek_policy(sig_algorithm=SigAlgorithm.RSA, sig_hash=SigHashAlgorithm.SHA256, sig_key_bits=2048)


def member_process() -> None:
    """Member: hold the KEK and the key server's public key, answer one push with its ack."""
    spki = bytes.fromhex(json.loads(sys.stdin.readline())["spki"])
    policy = rsa_policy()
    receiver = PushReceiver(GROUP, ip_address(LOOPBACK))
    receiver.install(policy, KekKeys(kek_keys().kek, VerifyingKey.from_spki(spki)), seq=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.settimeout(SOCKET_TIMEOUT)
        _emit({"port": sock.getsockname()[1]})
        datagram, source = sock.recvfrom(65535)
        result = receiver.receive(datagram, source, 0.0)
        if isinstance(result, PushAccepted) and result.datagram_for_ack is not None:
            sock.sendto(result.datagram_for_ack, source)  # reply addressing, RFC 8263 §3
        seq = result.payloads.seq if isinstance(result, PushAccepted) else None
        _emit({"result": type(result).__name__, "seq": seq, "source_port": source[1]})


def key_server_process() -> None:
    """Key server: push new TEKs to the member, wait for its ack and verify it."""
    request = json.loads(sys.stdin.readline())
    key = SigningKey.from_pem(request["pem"].encode())
    policy = rsa_policy()
    sa, kd = group_policy(sa=group_sa(kek=False, gap=False)).to_wire()
    datagram = build_push(kek_keys().kek, KEK_SPI, PushPayloads(1, group_sa=sa, key_download=kd), key, policy.scheme)
    verifier = AckVerifier()
    verifier.install(policy, kek_keys().kek)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.settimeout(SOCKET_TIMEOUT)
        sock.sendto(datagram, (LOOPBACK, request["member_port"]))
        ack, source = sock.recvfrom(65535)
        result = verifier.receive(ack, source, 0.0)
        record: dict[str, object] = {"result": type(result).__name__, "port": sock.getsockname()[1]}
        if isinstance(result, AckReceived):
            record.update(
                seq=result.seq, member=str(result.member), source=list(result.source), kek_spi=result.kek_spi.hex()
            )
        _emit(record)


def _start(function: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    code = f"from test_push_udp import {function}; {function}()"
    return subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE
    )


@pytest.mark.timeout(2 * PROCESS_TIMEOUT)
def test_a_push_and_its_ack_between_two_processes() -> None:
    key = SigningKey.generate(SigAlgorithm.RSA)
    member = _start("member_process")
    server: subprocess.Popen[str] | None = None
    try:
        assert member.stdin is not None and member.stdout is not None
        member.stdin.write(json.dumps({"spki": key.public.spki.hex()}) + "\n")
        member.stdin.flush()
        port = json.loads(member.stdout.readline())["port"]
        server = _start("key_server_process")
        pem = key.to_pem().decode()
        server_out, _ = server.communicate(json.dumps({"pem": pem, "member_port": port}) + "\n", PROCESS_TIMEOUT)
        member_out, _ = member.communicate(timeout=PROCESS_TIMEOUT)
        assert (member.returncode, server.returncode) == (0, 0)
    finally:
        for process in (member, server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    at_member, at_server = json.loads(member_out), json.loads(server_out)
    assert at_member == {"result": "PushAccepted", "seq": 1, "source_port": at_server["port"]}
    assert at_server == {
        "result": "AckReceived",
        "port": at_server["port"],
        "seq": 1,
        "member": LOOPBACK,
        "source": [LOOPBACK, port],  # the ack leaves from the port the push went to
        "kek_spi": KEK_SPI.hex(),
    }
