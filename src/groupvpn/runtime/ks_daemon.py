"""`groupvpn ks`: the key server core on its UDP socket, with its store and control socket.

Startup order is what makes a restart safe: open the store, load or
generate every group's keys (``KeyServer`` does it on construction),
and only then open the socket, so nothing is served that is not already
on disk.  Each registration, failure and refusal becomes one log line;
keys and pre-shared keys never do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.model import KeyServerConfig, ServerGroup, load_server
from ..config.values import CommunicationType
from ..crypto.errors import CryptoError
from ..crypto.sig import SigningKey
from ..gdoi.events import MemberRegistered, RegistrationRefused
from ..gdoi.policy import Endpoint, GroupAssociatedPolicy
from ..ike.events import IkeSaDeleted, IkeSaEstablished, IkeSaFailed, NotifyReceived
from ..ike.sa import Address
from ..ks.keys import GroupConfig, KekConfig, TekConfig
from ..ks.server import (
    Gateway,
    GroupSettings,
    KeyServer,
    PolicyRejected,
    PullRateLimited,
    RegistrationNotStored,
    ServerEvent,
    ServerSettings,
)
from ..ks.store import KeyStore, StoreError
from ..ks.views import (
    UnknownGroup,
    ipsec_security_associations,
    kek_security_associations,
    registered_members,
    statistics,
)
from ..wire.numbers import NotifyType, SigAlgorithm, name_of
from .control import ControlError, Request
from .daemon import StartupError, load_config, udp_socket
from .udp import UdpDriver

log = logging.getLogger("groupvpn.ks")

STATE_FILE_NAME = "ks.db"
# Signature algorithm by key size: RSA keys are at least 1024 bits, so sizes never collide.
_ECDSA_BY_BITS = {256: SigAlgorithm.ECDSA_256, 384: SigAlgorithm.ECDSA_384, 521: SigAlgorithm.ECDSA_521}


# -- configuration: the typed model to the core's settings -----------------------------


@dataclass(frozen=True)
class KsConfig:
    """What the daemon takes from its configuration file."""

    settings: ServerSettings
    listen: Address
    routing_instance: str | None
    state_file: Path
    signing_keys: Mapping[int, Path]  # PEM files groups start with


def load(path: Path) -> KsConfig:
    """Read and check ``path``: ``ConfigError`` (every problem, at its position), another ``ValueError`` or ``OSError``."""
    model = load_server(path.read_text())
    return KsConfig(
        ServerSettings(
            str(model.address),
            model.suites,
            tuple(Gateway(g.name, g.policy.psk, frozenset(str(a) for a in g.addresses)) for g in model.gateways),
            tuple(_group(model, group) for group in model.groups),
        ),
        (str(model.address), model.port),
        model.routing_instance,
        model.state_file,
        {g.group_id: g.kek.signing_key for g in model.groups if g.kek.signing_key is not None},
    )


def _group(model: KeyServerConfig, group: ServerGroup) -> GroupSettings:
    server = Endpoint(model.address, model.port)
    kek = group.kek
    unicast = kek.communication is CommunicationType.UNICAST
    try:
        sig_algorithm = SigAlgorithm.RSA if kek.signing_key is None else _sig_algorithm(kek.signing_key)
        config = GroupConfig(
            group.group_id,
            KekConfig(
                lifetime=kek.lifetime,
                source=server,
                # Unicast pushes go to each member; the core names its address in the member's SA KEK.
                destination=server if unicast or kek.multicast is None else kek.multicast,
                algorithm=kek.algorithm,
                key_bits=kek.key_bits,
                sig_algorithm=sig_algorithm,
                sig_hash=kek.sig_hash,
                ack=kek.ack,
            ),
            tuple(TekConfig(sa.name, sa.proposal.suite, sa.proposal.lifetime, sa.selectors) for sa in group.sas),
            None if group.gap == GroupAssociatedPolicy() else group.gap,
            group.deny,
            group.rekey_fraction,
        )
    except (ValueError, CryptoError) as err:
        raise ValueError(f"group {group.name} (group-id {group.group_id}): {err}") from None
    return GroupSettings(config, tuple(g.name for g in group.gateways), unicast)


def _sig_algorithm(pem: Path) -> SigAlgorithm:
    """RSA or the ECDSA curve of the configured signing key."""
    try:
        key = SigningKey.from_pem(pem.read_bytes())
    except OSError as err:
        raise ValueError(f"cannot read signing-key {pem}: {err.strerror}") from None
    except CryptoError as err:
        raise ValueError(f"signing-key {pem}: {err}") from None
    return _ECDSA_BY_BITS.get(key.public.key_bits, SigAlgorithm.RSA)


def state_path(config: KsConfig, state_dir: Path | None) -> Path:
    """The key store: in ``--state-dir`` when given, else the configured ``state-file``."""
    return config.state_file if state_dir is None else state_dir / STATE_FILE_NAME


# -- the daemon --------------------------------------------------------------------------


def describe(event: ServerEvent) -> tuple[int, str] | None:
    """The log level and operator-readable line for an event of the core (None: not worth a line)."""
    if isinstance(event, MemberRegistered):
        return logging.INFO, f"member {event.peer.address[0]} registered to group {event.group_id}"
    if isinstance(event, RegistrationRefused):
        group = "an unreadable group" if event.group_id is None else f"group {event.group_id}"
        return logging.WARNING, f"refused member {event.peer.address[0]} for {group}: {event.reason}"
    if isinstance(event, PolicyRejected | RegistrationNotStored):
        return logging.WARNING if isinstance(event, PolicyRejected) else logging.ERROR, event.reason
    if isinstance(event, PullRateLimited):
        return logging.WARNING, f"rate limiting GROUPKEY-PULLs from {event.address}"
    if isinstance(event, IkeSaEstablished):
        sa = event.sa
        return logging.INFO, f"IKE SA up with {sa.peer[0]} port {sa.peer[1]} ({sa.suite.name}, {sa.suite.lifetime} s)"
    if isinstance(event, IkeSaFailed):
        return logging.WARNING, f"Phase 1 with {event.peer[0]} failed: {event.message}"
    if isinstance(event, IkeSaDeleted):
        return logging.INFO, f"IKE SA with {event.sa.peer[0]} ended: {event.reason.value}"
    if isinstance(event, NotifyReceived):
        return logging.INFO, f"{event.peer[0]} sent {name_of(NotifyType, event.notify_type)}"
    return None


class KeyServerDaemon:
    """A running key server; ``start`` builds one, ``daemon.run`` serves it."""

    def __init__(self, config_path: Path, config: KsConfig, store: KeyStore, server: KeyServer, driver: UdpDriver) -> None:
        self.config_path = config_path
        self.config = config
        self.store = store
        self.server = server
        self.driver = driver
        self._events = asyncio.create_task(self._log_events())

    @classmethod
    async def start(cls, config_path: Path, state_dir: Path | None = None) -> KeyServerDaemon:
        config = load_config(config_path, load)
        path = state_path(config, state_dir)
        try:
            store = KeyStore(path)
        except (StoreError, OSError) as err:
            raise StartupError(f"cannot open the key store {path}: {err}") from None
        try:
            _seed_signing_keys(config, store)
            server = KeyServer(config.settings, store, time.time())
            sock = udp_socket(config.listen, config.routing_instance)
        except StartupError:
            store.close()
            raise
        except (ValueError, StoreError, CryptoError, OSError) as err:
            store.close()
            raise StartupError(f"cannot serve the configured groups: {err}") from None
        driver = await UdpDriver.open(server, sock=sock, clock=time.time)
        where = f" in routing instance {config.routing_instance}" if config.routing_instance else ""
        groups = ", ".join(str(g) for g in sorted(server.groups))
        log.info("key server on UDP %s port %d%s, store %s, groups %s", *config.listen, where, path, groups)
        return cls(config_path, config, store, server, driver)

    async def handle(self, request: Request) -> Any:
        """A control request: ``show`` of the server topics; keys only with ``show_keys``."""
        if request.get("role", "server") != "server":
            raise ControlError("this is the key server; member commands go to the member daemon")
        topic, group, keys = request.get("topic"), request.get("group"), bool(request.get("show_keys"))
        if request["op"] != "show":
            raise ControlError(f"the key server does not support '{request['op']} {topic}' yet")
        now = time.time()
        try:
            if topic == "registered-members":
                return registered_members(self.server, group)
            if topic == "kek-security-associations":
                return kek_security_associations(self.server, now, group, keys)
            if topic == "ipsec-security-associations":
                return ipsec_security_associations(self.server, now, group, keys)
            if topic == "statistics":
                return statistics(self.server, group)
        except UnknownGroup as err:
            raise ControlError(str(err)) from None
        raise ControlError(f"the key server has no '{topic}' to show")

    def reload(self) -> None:
        """Re-read the configuration; apply it if valid, else keep serving the running one."""
        try:
            config = load(self.config_path)
        except (ValueError, OSError) as err:  # ConfigError among them
            log.error("reload of %s refused, still serving the previous configuration: %s", self.config_path, err)
            return
        if (config.listen, config.routing_instance) != (self.config.listen, self.config.routing_instance):
            log.warning("a new listen address or port takes a restart; still on %s port %d", *self.config.listen)
        try:
            _seed_signing_keys(config, self.store)
            self.server.reconfigure(config.settings, time.time())
        except (ValueError, StoreError, CryptoError, OSError) as err:
            log.error("reload of %s refused, still serving the previous configuration: %s", self.config_path, err)
            return
        self.config = config
        log.info("configuration reloaded: groups %s", ", ".join(str(g) for g in sorted(self.server.groups)))

    async def close(self) -> None:
        self._events.cancel()
        self.driver.close()
        self.store.close()

    async def _log_events(self) -> None:
        while True:
            event = await self.driver.events.get()
            line = describe(event)
            if line is not None:
                log.log(*line)


def _seed_signing_keys(config: KsConfig, store: KeyStore) -> None:
    """Groups with a configured PEM signing key start with it; a stored key is never replaced."""
    for group_id, path in config.signing_keys.items():
        pem = path.read_bytes()
        SigningKey.from_pem(pem)
        stored = store.signing_key_pem(group_id)
        if stored is None:
            store.create_group(group_id, pem, time.time())
            log.info("group %d signs pushes with the key from %s", group_id, path)
        elif stored != pem:
            log.warning("group %d keeps the signing key in its store; %s differs and is not used", group_id, path)
