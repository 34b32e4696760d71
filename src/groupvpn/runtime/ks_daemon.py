"""`groupvpn ks`: the key server core on its UDP socket, with its store and control socket.

Startup order is what makes a restart safe: open the store, load or
generate every group's keys (``KeyServer`` does it on construction),
and only then open the socket, so nothing is served that is not already
on disk.  Each registration, failure and refusal, and each step of a
rekey (key generated, push sent with its SEQ and members, each ack,
retransmission, member marked inactive or removed) becomes one
timestamped log line; keys and pre-shared keys never do.

Operator commands over the control socket, besides ``show``:

* ``clear security group-vpn server registered-members member ADDR
  [group N] [method delete|dtd]`` removes a member (default method
  delete; without a group, from every group it belongs to);
* ``request security group-vpn server rekey group N`` rekeys a group now;
* ``request security group-vpn server reauthorize member ADDR [group N]``
  lets a removed member register again.  Listing it again in the
  configuration does not: removal outlives reloads and restarts.

SIGHUP re-reads the configuration; what changed in a group's policy is
pushed to its members with the GAP's ATD and DTD.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
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
from ..ks.rekey import (
    AckDropped,
    AckMissing,
    Delivery,
    MemberInactive,
    MemberRemoved,
    RekeyConfig,
    RekeyEvent,
)
from ..ks.removal import DEFAULT_REMOVAL_DTD, RemovalMethod
from ..ks.server import (
    Gateway,
    GroupSettings,
    KeyServer,
    PolicyRejected,
    PullRateLimited,
    RegistrationNotStored,
    ServerEvent,
    ServerOutput,
    ServerSettings,
    StoreFailed,
    UnknownGroup,
)
from ..ks.store import KeyStore, StoreError
from ..ks.views import (
    View,
    events,
    ipsec_security_associations,
    kek_security_associations,
    registered_members,
    statistics,
)
from ..wire.numbers import GDOI_PORT, NotifyType, SigAlgorithm, name_of
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
    kek = group.kek
    multicast = kek.multicast if kek.communication is CommunicationType.MULTICAST else None
    dtd = group.gap.deactivation_delay
    try:
        sig_algorithm = SigAlgorithm.RSA if kek.signing_key is None else _sig_algorithm(kek.signing_key)
        config = GroupConfig(
            group.group_id,
            KekConfig(
                lifetime=kek.lifetime,
                source=Endpoint(model.address, model.port),
                # Unicast pushes go to each member at the GDOI port, where member daemons
                # listen; the core names the member's own address in its SA KEK.
                destination=Endpoint(model.address, GDOI_PORT) if multicast is None else multicast,
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
        rekey = RekeyConfig(
            retransmission_period=kek.retransmission_period,
            retransmissions=kek.retransmissions,
            delivery=Delivery.UNICAST if multicast is None else Delivery.MULTICAST,
            # A removal by DTD must undercut the group's own DTD.
            removal_dtd=DEFAULT_REMOVAL_DTD if dtd is None else min(DEFAULT_REMOVAL_DTD, max(dtd - 1, 0)),
        )
        return GroupSettings(config, tuple(g.name for g in group.gateways), rekey)
    except (ValueError, CryptoError) as err:
        raise ValueError(f"group {group.name} (group-id {group.group_id}): {err}") from None


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


# Rekey events worth more than INFO; the others (keys, pushes, acks...) are the normal course.
_REKEY_LEVELS: dict[type, int] = {
    AckDropped: logging.WARNING,
    AckMissing: logging.WARNING,
    MemberInactive: logging.WARNING,
    MemberRemoved: logging.WARNING,
}


def describe(event: ServerEvent) -> tuple[int, str] | None:
    """The log level and operator-readable line for an event of the core (None: not worth a line)."""
    if isinstance(event, RekeyEvent):
        return _REKEY_LEVELS.get(type(event), logging.INFO), event.text
    if isinstance(event, StoreFailed):
        return logging.ERROR, event.text
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
    async def start(
        cls, config_path: Path, state_dir: Path | None = None, *, crash_before_push: bool = False
    ) -> KeyServerDaemon:
        """Open the store, make or load every group's keys, then the socket (``crash_before_push``: see ``KilledAtPush``)."""
        config = load_config(config_path, load)
        path = state_path(config, state_dir)
        try:
            store = KilledAtPush(path) if crash_before_push else KeyStore(path)
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
        daemon = cls(config_path, config, store, server, driver)
        # The driver arms the core's timer after each call: make the first one now, so the
        # rekey schedule runs (and keys a crash kept from leaving are pushed) without waiting for a datagram.
        driver.step(server.handle_timer)
        return daemon

    async def handle(self, request: Request) -> Any:
        """A control request: ``show`` (keys only with ``show_keys``), ``clear`` or ``request``."""
        if request.get("role", "server") != "server":
            raise ControlError("this is the key server; member commands go to the member daemon")
        op, topic = request["op"], request.get("topic")
        try:
            if op == "show":
                return self._show(topic, _option(request, "group", int), bool(request.get("show_keys")))
            if (op, topic) == ("clear", "registered-members"):
                return self._removal(request)
            if (op, topic) == ("request", "rekey"):
                group = _option(request, "group", int)
                if group is None:
                    raise ControlError("name the group: request security group-vpn server rekey group N")
                return self._act(f"Group VPN server rekey of group {group}", lambda now: self.server.force_rekey(group, now))
            if (op, topic) == ("request", "reauthorize"):
                member, group = _member(request, "request security group-vpn server reauthorize"), _option(request, "group", int)
                return self._act(
                    f"Group VPN server re-authorization of {member}",
                    lambda now: self.server.reauthorize(member, now, group),
                )
        except (UnknownGroup, ValueError) as err:
            raise ControlError(str(err)) from None
        except StoreError as err:
            log.error("'%s %s' failed: %s", op, topic, err)
            raise ControlError(f"the key store failed: {err}") from None
        raise ControlError(f"the key server does not support '{op} {topic}'")

    def _show(self, topic: str | None, group: int | None, keys: bool) -> View:
        now = time.time()
        if topic == "registered-members":
            return registered_members(self.server, group)
        if topic == "kek-security-associations":
            return kek_security_associations(self.server, now, group, keys)
        if topic == "ipsec-security-associations":
            return ipsec_security_associations(self.server, now, group, keys)
        if topic == "statistics":
            return statistics(self.server, group)
        raise ControlError(f"the key server has no '{topic}' to show")

    def _removal(self, request: Request) -> View:
        member = _member(request, "clear security group-vpn server registered-members")
        group = _option(request, "group", int)
        method = RemovalMethod(_option(request, "method", str) or RemovalMethod.DELETE)
        return self._act(
            f"Group VPN server removal of {member} (method {method})",
            lambda now: self.server.remove_member(member, method, now, group),
        )

    def _act(self, title: str, action: Callable[[float], ServerOutput]) -> View:
        """Run a command on the core now, send what it sends, and answer with the events it caused."""
        done: list[ServerOutput] = []

        def run(now: float) -> ServerOutput:
            done.append(action(now))
            return done[0]

        self.driver.step(run)
        return events(title, [e for e in done[0].events if isinstance(e, RekeyEvent)])

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
            self.driver.step(lambda now: self.server.reconfigure(config.settings, now))
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


def _option(request: Request, name: str, kind: type) -> Any:
    """An optional field of a control request, of type ``kind``."""
    value = request.get(name)
    if value is not None and not isinstance(value, kind):
        raise ControlError(f"'{name}' must be a {kind.__name__}, not {value!r}")
    return value


def _member(request: Request, command: str) -> str:
    member = _option(request, "member", str)
    if member is None:
        raise ControlError(f"name the member: {command} member ADDR [group N]")
    return str(member)


class KilledAtPush(KeyStore):
    """A store that SIGKILLs its own process as soon as a push SEQ is claimed (hidden ``--crash-before-push``).

    Test-only: it stops the key server at the worst moment of a rekey --
    the new keys stored as pending, the SEQ spent, the push never sent --
    so a test can restart it and watch the same keys go out with a higher
    SEQ.  Nothing else uses it.
    """

    def next_push_seq(self, kek_spi: bytes) -> int:
        seq = super().next_push_seq(kek_spi)
        log.warning("test hook: push SEQ %d under KEK %s claimed; killing the key server before it is sent", seq, kek_spi.hex())
        os.kill(os.getpid(), signal.SIGKILL)
        return seq


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
