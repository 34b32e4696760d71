"""What `show security group-vpn member ...` prints, as views of running member cores and their SAs.

A view is ``{"title", "records": [{field: value}], "notes": [...]}``
(``ops.show`` lays it out).  Views only read a ``MemberState``: the
cores, their shared SA database, ``now`` on the cores' monotonic clock
and the ``wall_offset`` that turns it into Unix time for the instants
shown.  Key material appears only with ``show_keys``; ``detail``
adds fields.  Every view notes the VPNs that are not registered and why,
so a refusal is visible whatever an operator looks at.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..ike.initiator import InitiatorState
from ..wire.isakmp import Identification
from ..wire.numbers import IdType, PolicyAction, name_of
from .member import Connection, Member, Registration, VpnState
from .sadb import GroupSas, SaDatabase

View = dict[str, Any]


@dataclass(frozen=True)
class MemberState:
    """What the views read: every core of the daemon and the SA database they share, at ``now``."""

    members: tuple[Member, ...]
    sadb: SaDatabase
    now: float
    wall_offset: float

    def wall(self, instant: float | None) -> str | None:
        return None if instant is None else _time(instant + self.wall_offset)

    def registrations(self, group_id: int | None = None) -> list[Registration]:
        found = sorted((r for m in self.members for r in m.registrations.values()), key=lambda r: r.settings.name)
        if group_id is None:
            return found
        chosen = [r for r in found if r.settings.group_id == group_id]
        if not chosen:
            raise UnknownGroup(f"no group VPN of this member joins group {group_id}")
        return chosen

    def groups(self, registrations: Iterable[Registration]) -> Iterator[tuple[Registration, GroupSas]]:
        """The registrations that have SAs installed, with them."""
        for registration in registrations:
            group = self.sadb.groups.get(registration.settings.group_id)
            if group is not None:
                yield registration, group


class UnknownGroup(LookupError):
    """A view was asked for a group no VPN of this member joins."""


def _time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _status(registration: Registration) -> str:
    """One line saying where a VPN stands; for notes."""
    settings = registration.settings
    head = f"vpn {settings.name} group {settings.group_id}: {registration.state.value}"
    if registration.state is VpnState.DOWN and not settings.interfaces:
        return f"{head} (its service set is applied to no interface)"
    failure = registration.last_failure
    if failure is None or registration.state is VpnState.REGISTERED:
        return head
    return f"{head}; last attempt with {failure.server}: {failure.failure.value}: {failure.reason}"


def _not_registered(registrations: Iterable[Registration]) -> list[str]:
    return [_status(r) for r in registrations if r.state is not VpnState.REGISTERED]


def _spi(spi: bytes) -> str:
    return f"0x{spi.hex()}"


def _identity(identification: Identification) -> str:
    """An ID payload as Phase 1 exchanged it: its RFC 2407 type name and value."""
    return f"ID_{name_of(IdType, identification.id_type)} {identification.value}"


def _connections(members: Iterable[Member]) -> list[Connection]:
    return sorted((c for m in members for c in m.connections.values()), key=lambda c: c.server)


def ike_security_associations(state: MemberState, detail: bool = False) -> View:
    records = []
    for connection in _connections(state.members):
        sa = connection.phase1.sa
        up = connection.phase1.state is InitiatorState.ESTABLISHED
        record: dict[str, Any] = {
            "remote_address": connection.server[0],
            "state": "UP" if up else connection.phase1.state.value,
            "initiator_cookie": sa.icookie.hex() if sa is not None else None,
            "responder_cookie": sa.rcookie.hex() if sa is not None else None,
            "mode": "Main",
        }
        if detail:
            pull = connection.pull
            record |= {
                "local_address": str(connection.phase1.identity.value),
                "remote_port": connection.server[1],
                "local_identity": _identity(sa.local_identity) if sa is not None else None,
                "remote_identity": _identity(sa.peer_identity) if sa is not None else None,
                "suite": sa.suite.name if sa is not None else None,
                "lifetime": sa.suite.lifetime if sa is not None else None,
                "remaining": max(0, round(sa.expires_at - state.now)) if sa is not None else None,
                "established": state.wall(sa.established_at) if sa is not None else None,
                "registering": pull.vpn if pull is not None else None,
                "waiting": list(connection.queue),
            }
        records.append(record)
    count = sum(1 for r in records if r["state"] == "UP")
    notes = [f"{count} IKE SA{'s' if count != 1 else ''} up"]
    return {
        "title": "Group VPN member IKE security associations",
        "records": records,
        "notes": notes + _not_registered(state.registrations()),
    }


def kek_security_associations(
    state: MemberState, group_id: int | None = None, show_keys: bool = False, detail: bool = False
) -> View:
    """One record per group VPN: its registration and its rekey SA (none until registered)."""
    records = []
    registrations = state.registrations(group_id)
    for registration in registrations:
        settings = registration.settings
        group = state.sadb.groups.get(settings.group_id)
        kek = group.kek if group is not None else None
        record: dict[str, Any] = {
            "vpn": settings.name,
            "group": settings.group_id,
            "server": registration.server[0],
            "state": registration.state.value,
            "kek_spi": kek.spi.hex() if kek is not None else None,
            "remaining": round(kek.remaining(state.now)) if kek is not None else None,
            "push_seq": kek.seq if kek is not None else None,
        }
        if detail:
            policy = kek.policy if kek is not None else None
            failure = registration.last_failure
            record |= {
                "algorithm": f"{policy.algorithm.name}-{len(kek.keys.kek.key) * 8}" if kek and policy else None,
                "signature": " ".join(a.name for a in (policy.sig_algorithm, policy.sig_hash) if a) if policy else None,
                "lifetime": policy.lifetime if policy is not None else None,
                "push_source": str(policy.source) if policy is not None else None,
                "push_destination": str(policy.destination) if policy is not None else None,
                "registered": state.wall(registration.registered_at),
                "last_failure": f"{failure.failure.value}: {failure.reason}" if failure is not None else None,
            }
        if show_keys and kek is not None:
            record |= {"kek_iv": kek.keys.kek.iv.hex(), "kek_key": kek.keys.kek.key.hex()}
        records.append(record)
    return {
        "title": "Group VPN member KEK security associations",
        "records": records,
        "notes": _not_registered(registrations),
    }


def ipsec_security_associations(
    state: MemberState, group_id: int | None = None, show_keys: bool = False, detail: bool = False
) -> View:
    """One record per TEK; ``encrypting`` says whether it encrypts some rule's traffic now."""
    now = state.now
    registrations = state.registrations(group_id)
    records = []
    for registration, group in state.groups(registrations):
        encrypting = {tek.spi for rule in group.rules if (tek := group.encrypting(rule, now)) is not None}
        for tek in group.teks:
            record: dict[str, Any] = {
                "vpn": registration.settings.name,
                "group": group.group_id,
                "server": registration.server[0],
                "spi": _spi(tek.spi),
                "algorithm": tek.suite.name,
                "remaining": round(tek.remaining(now)),
                "encrypting": tek.spi in encrypting,
            }
            if detail:
                record |= {
                    "lifetime": tek.policy.lifetime,
                    "lifetime_kilobytes": tek.policy.lifetime_kilobytes,
                    "installed": state.wall(tek.installed_at),
                    "selectors": [str(s) for s in tek.selectors],
                    "address_preservation": tek.policy.preservation.name.lower(),
                    "direction": tek.policy.direction.name.lower(),
                    "anti_replay_window": group.gap.anti_replay_window if group.gap is not None else None,
                }
            if show_keys:
                keys = tek.keys
                record |= {"encryption_key": keys.encryption.hex(), "integrity_key": keys.integrity.hex() or None}
            records.append(record)
    total = f"Total active TEKs: {len(records)}"
    return {
        "title": "Group VPN member IPsec security associations",
        "records": records,
        "notes": [total, *_not_registered(registrations)],
    }


def policy(state: MemberState, group_id: int | None = None) -> View:
    """The rules each group's key server sent, in order, and the TEK encrypting each now."""
    registrations = state.registrations(group_id)
    records = []
    for registration, group in state.groups(registrations):
        for index, rule in enumerate(group.rules, 1):
            tek = group.encrypting(rule, state.now)
            records.append(
                {
                    "vpn": registration.settings.name,
                    "group": group.group_id,
                    "rule": index,
                    "action": "encrypt" if rule.action is PolicyAction.PERMIT else "bypass",
                    "selector": str(rule.selector),
                    "sa": _spi(tek.spi) if tek is not None else None,
                }
            )
    return {"title": "Group VPN member policy", "records": records, "notes": _not_registered(registrations)}


_TRAFFIC = ("encrypted_packets", "decrypted_packets", "clear_packets", "dropped_packets")
_DETAIL = (
    "outbound_packets",
    "outbound_bytes",
    "encrypted_bytes",
    "inbound_packets",
    "inbound_bytes",
    "decrypted_bytes",
    "write_errors",
    "policy_version",
    "rejected_updates",
)


def ipsec_statistics(
    state: MemberState,
    dataplanes: Mapping[str, Mapping[str, Any]],
    group_id: int | None = None,
    detail: bool = False,
) -> View:
    """One record per group VPN: its data plane's state, service filters, fail-open, packet counters and drops.

    ``dataplanes`` maps a VPN to its data plane's ``data_plane`` status
    line, ``service_filters``, ``fail_open`` and counters (summed over its
    workers; absent while it does not run).
    """
    registrations = state.registrations(group_id)
    records = []
    for registration in registrations:
        name = registration.settings.name
        found = dataplanes.get(name, {})
        record: dict[str, Any] = {
            "vpn": name,
            "group": registration.settings.group_id,
            "data_plane": found.get("data_plane", "none"),
            "service_filters": found.get("service_filters", "none"),
            "fail_open": found.get("fail_open", False),
        }
        record |= {field: found.get(field, 0) for field in _TRAFFIC}
        if detail:
            record |= {field: found.get(field) for field in _DETAIL}
        record["drops"] = dict(found.get("drops", {}))
        records.append(record)
    notes = ["Counters are per data plane since it started (summed over its workers), not per SPI"]
    return {
        "title": "Group VPN member IPsec statistics",
        "records": records,
        "notes": notes + _not_registered(registrations),
    }
