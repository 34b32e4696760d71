"""What `show security group-vpn server ...` prints, as views of a running ``KeyServer``.

A view is ``{"title", "records": [{field: value}], "notes": [...]}``
(``ops.show`` lays it out).  Views only read: the core and its store.
Key material appears only when the caller passes ``show_keys``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .rekey import RekeyEvent
from .server import Group, KeyServer
from .store import KeyState, KeyTimes, StoredKek, StoredTek

View = dict[str, Any]

# Counters every statistics view shows, even at zero: the server's, then each group's.
_ALWAYS = ("registrations", "pulls rate limited", "registrations not stored")
_GROUP_ALWAYS = ("registrations", "pushes sent", "push acknowledgements")


def _time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _groups(server: KeyServer, group_id: int | None) -> list[Group]:
    if group_id is None:
        return [server.groups[g] for g in sorted(server.groups)]
    return [server.group(group_id)]


def _life(times: KeyTimes, now: float) -> dict[str, Any]:
    remaining = None if times.expires_at is None else max(0, round(times.expires_at - now))
    return {"lifetime": times.lifetime, "remaining": remaining, "activated": _time(times.activated_at)}


def registered_members(server: KeyServer, group_id: int | None = None) -> View:
    up = server.ike_peers()
    records = [
        {
            "group": group.group_id,
            "member": member.address,
            "state": member.state.value,
            "reason": member.reason or None,
            "ike_sa": "up" if member.address in up else "down",
            "first_registered": _time(member.first_registered),
            "last_registered": _time(member.last_registered),
            "last_ack_seq": member.last_ack_seq,
        }
        for group in _groups(server, group_id)
        for member in server.store.members(group.group_id)
    ]
    groups = len({r["group"] for r in records})
    return {
        "title": "Group VPN server registered members",
        "records": records,
        "notes": [f"{len(records)} member{'s' if len(records) != 1 else ''} in {groups} group{'s' if groups != 1 else ''}"],
    }


def events(title: str, happened: Iterable[RekeyEvent]) -> View:
    """What an operator command (rekey, removal, re-authorization) made happen, one record per event."""
    records = [{"time": _time(event.at), "event": event.text} for event in happened]
    return {"title": title, "records": records, "notes": [] if records else ["nothing to do"]}


def _kek(server: KeyServer, kek: StoredKek, now: float, show_keys: bool) -> dict[str, Any]:
    config = server.groups[kek.group_id].keys.config.kek
    record: dict[str, Any] = {
        "group": kek.group_id,
        "kek_spi": kek.spi.hex(),
        "state": kek.times.state.value,
        "algorithm": f"{kek.kek.algorithm.name}-{len(kek.kek.key) * 8}",
        "signature": " ".join(a.name for a in (config.sig_algorithm, config.sig_hash) if a is not None),
        **_life(kek.times, now),
        "push_seq": server.store.last_push_seq(kek.spi),
    }
    if show_keys:
        record |= {"iv": kek.kek.iv.hex(), "key": kek.kek.key.hex()}
    return record


def kek_security_associations(
    server: KeyServer, now: float, group_id: int | None = None, show_keys: bool = False
) -> View:
    records = [
        _kek(server, kek, now, show_keys)
        for group in _groups(server, group_id)
        for kek in server.store.keks(group.group_id)
    ]
    return {"title": "Group VPN server KEK security associations", "records": records, "notes": _states(records)}


def _tek(group: Group, tek: StoredTek, now: float, show_keys: bool) -> dict[str, Any]:
    configs = {t.name: t for t in group.keys.config.teks}
    selectors = [str(s) for s in configs[tek.name].selectors] if tek.name in configs else []
    record: dict[str, Any] = {
        "group": tek.group_id,
        "sa": tek.name,
        "spi": f"0x{tek.spi:08x}",
        "state": tek.times.state.value,
        "suite": tek.suite.name,
        **_life(tek.times, now),
        "selectors": selectors,
    }
    if show_keys:
        record |= {"encryption_key": tek.keys.encryption.hex(), "integrity_key": tek.keys.integrity.hex() or None}
    return record


def ipsec_security_associations(
    server: KeyServer, now: float, group_id: int | None = None, show_keys: bool = False
) -> View:
    records = [
        _tek(group, tek, now, show_keys)
        for group in _groups(server, group_id)
        for tek in server.store.teks(group.group_id)
    ]
    return {"title": "Group VPN server IPsec security associations", "records": records, "notes": _states(records)}


def _states(records: Iterable[dict[str, Any]]) -> list[str]:
    counts = Counter(r["state"] for r in records)
    return [", ".join(f"{counts[s]} {s}" for s in KeyState if counts[s])] if counts else []


def statistics(server: KeyServer, group_id: int | None = None) -> View:
    """Counters of the whole server (unless one group is asked for), then of each group."""
    records: list[dict[str, Any]] = []
    if group_id is None:
        server_counts = Counter(server.stats)
        server_counts.update(dict.fromkeys(_ALWAYS, 0))
        for scope, counts in (("server", server_counts), ("phase 1", server.phase1.stats), ("pull", server.pull_stats())):
            records += [{"scope": scope, "counter": name, "value": counts[name]} for name in sorted(counts)]
    for group in _groups(server, group_id):
        counts = Counter(group.stats)
        counts.update(dict.fromkeys(_GROUP_ALWAYS, 0))
        records += [{"scope": f"group {group.group_id}", "counter": n, "value": counts[n]} for n in sorted(counts)]
    return {
        "title": "Group VPN server statistics",
        "records": records,
        "notes": [
            f"{len(server.phase1.sessions)} IKE SAs up, {server.phase1.half_open} half open, "
            f"{server.pulls_in_progress} GROUPKEY-PULLs in progress"
        ],
    }
