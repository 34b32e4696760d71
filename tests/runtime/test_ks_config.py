"""From the Junos-style configuration to the key server core's settings (the daemon's glue)."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import ip_address
from pathlib import Path

import pytest

from groupvpn.crypto.sig import SigningKey
from groupvpn.gdoi import Endpoint
from groupvpn.ks.rekey import Delivery, RekeyConfig
from groupvpn.ks.server import KeyServer
from groupvpn.ks.store import KeyStore
from groupvpn.runtime.daemon import StartupError
from groupvpn.runtime.ks_daemon import KeyServerDaemon, load, state_path
from groupvpn.wire.numbers import SigAlgorithm, SigHashAlgorithm
from test_ks_daemon import config_text, free_udp_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ks.conf"
T0 = 1_700_000_000.0


def test_the_example_configuration_serves_its_three_groups(tmp_path):
    config = load(EXAMPLE)
    assert (config.listen, config.routing_instance) == (("198.18.0.1", 848), None)
    settings = config.settings
    groups = {g.group_id: g for g in settings.groups}
    assert sorted(groups) == [10, 20, 30]
    assert [t.name for t in groups[10].keys.teks] == ["lan", "voice"] and len(groups[10].keys.deny) == 1
    assert (groups[10].unicast, groups[20].unicast, groups[30].unicast) == (True, False, True)
    assert groups[20].keys.kek.destination == Endpoint(ip_address("239.192.0.20"), 848)
    assert groups[20].keys.kek.sig_hash is SigHashAlgorithm.SHA384 and groups[20].keys.rekey_fraction == 0.2
    assert groups[30].keys.gap is not None and groups[30].keys.gap.anti_replay_window == 0
    assert settings.gateways_of("198.18.10.2") == {"dc-gms"} and settings.gateways_of("203.0.113.9") == {"guest-gms"}
    with KeyStore(tmp_path / "ks.db") as store:
        server = KeyServer(settings, store, T0)
        policy = server.groups[10].policy(("198.18.1.2", 848), T0)
        assert policy.kek is not None and policy.kek.destination == Endpoint(ip_address("198.18.1.2"), 848)
        assert [t.permits for t in policy.teks] == [True, True, True, False]
        multicast = server.groups[20].policy(("198.18.10.2", 848), T0)
        assert multicast.kek is not None and multicast.kek.destination.address == ip_address("239.192.0.20")


def test_state_dir_wins_over_the_configured_state_file(tmp_path):
    config = load(EXAMPLE)
    assert state_path(config, None) == Path("/var/lib/groupvpn/ks.db")
    assert state_path(config, tmp_path) == tmp_path / "ks.db"


def test_push_delivery_follows_server_member_communication(tmp_path):
    config = load(EXAMPLE)
    groups = {g.group_id: g for g in config.settings.groups}
    # Unicast: pushes to each member at GDOI's port; a removal by DTD undercuts the group's 30 s.
    assert groups[10].rekey == RekeyConfig(10, 2, Delivery.UNICAST, removal_dtd=5)
    assert groups[10].keys.kek.destination == Endpoint(ip_address("198.18.0.1"), 848)
    assert groups[20].rekey == RekeyConfig(10, 2, Delivery.MULTICAST)
    port = free_udp_port()
    text = config_text(port).replace(
        "anti-replay-time-window 10;",
        "anti-replay-time-window 10; deactivation-time-delay 3;\n"
        "server-member-communication { retransmission-period 3; number-of-retransmission 4; ack-request legacy; }",
    )
    path = tmp_path / "ks.conf"
    path.write_text(text)
    (group,) = load(path).settings.groups
    assert group.rekey == RekeyConfig(3, 4, Delivery.UNICAST, removal_dtd=2)
    assert group.keys.kek.destination.port == 848 and group.keys.kek.source.port == port
    assert group.keys.kek.ack is not None and group.keys.kek.ack.legacy


def test_counter_mode_sas_are_served_with_sender_ids(tmp_path):
    text = config_text(free_udp_port()).replace(
        "authentication-algorithm hmac-sha-256-128;\n                    encryption-algorithm aes-128-cbc;",
        "encryption-algorithm aes-128-gcm;",
    )
    path = tmp_path / "gcm.conf"
    path.write_text(text)
    (group,) = load(path).settings.groups
    assert [tek.suite.counter_mode for tek in group.keys.teks] == [True]
    with KeyStore(tmp_path / "ks.db") as store:
        assert KeyServer(load(path).settings, store, T0).groups[1].policy(None, T0).sa.counter_mode


def _with_signing_key(tmp_path: Path, key: SigningKey, name: str) -> Path:
    pem = tmp_path / f"{name}.pem"
    pem.write_bytes(key.to_pem())
    text = config_text(free_udp_port()).replace(
        "anti-replay-time-window 10;", f"anti-replay-time-window 10;\n server-member-communication {{ signing-key {pem}; }}"
    )
    path = tmp_path / f"{name}.conf"
    path.write_text(text)
    return path


def test_a_configured_signing_key_is_stored_once_and_never_replaced(tmp_path, caplog):
    first = SigningKey.generate(SigAlgorithm.ECDSA_256)
    config_path = _with_signing_key(tmp_path, first, "first")
    group = load(config_path).settings.groups[0]
    assert group.keys.kek.sig_algorithm is SigAlgorithm.ECDSA_256

    async def start_and_close(path: Path) -> KeyServer:
        daemon = await KeyServerDaemon.start(path, tmp_path / "state")
        await daemon.close()
        return daemon.server

    server = asyncio.run(start_and_close(config_path))
    assert server.groups[1].keys.signing_key(T0).public.spki == first.public.spki
    other = _with_signing_key(tmp_path, SigningKey.generate(SigAlgorithm.ECDSA_256), "second")
    with caplog.at_level(logging.WARNING, logger="groupvpn.ks"):
        server = asyncio.run(start_and_close(other))
    assert server.groups[1].keys.signing_key(T0).public.spki == first.public.spki
    assert f"group 1 keeps the signing key in its store; {tmp_path / 'second.pem'} differs and is not used" in caplog.text


def test_startup_errors_name_what_failed(tmp_path):
    config_path = tmp_path / "ks.conf"
    config_path.write_text(config_text(free_udp_port()))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ks.db").write_text("not a database")
    (tmp_path / "state" / "ks.db").chmod(0o600)
    with pytest.raises(StartupError, match="cannot open the key store .*ks.db"):
        asyncio.run(KeyServerDaemon.start(config_path, tmp_path / "state"))
    with pytest.raises(StartupError, match="cannot read .*absent.conf"):
        asyncio.run(KeyServerDaemon.start(tmp_path / "absent.conf", tmp_path / "state"))
