"""The key server's durable state in SQLite: signing keys, KEKs, TEKs, push sequence numbers,
every SPI ever issued, sender-ID counters and the member registry.

Everything a restarted key server must neither lose nor reuse lives here
(ARCHITECTURE.md principle 6).  Each write is one ``BEGIN IMMEDIATE``
transaction that has committed -- WAL with ``synchronous=FULL``, so the
commit is on disk -- before the method returns, hence before the caller
can put the result on the wire.  Secrets are stored as they are (the file
is created 0600 and a looser existing file is refused); they never appear
in reprs or error messages.

Times are seconds since the epoch as the caller's clock gave them: the
store never reads a clock.  Every SQLite failure (a full disk, a locked
or damaged file) leaves as a ``StoreError``, so callers handle one kind.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ..crypto.gdoi import Kek
from ..crypto.suites import EspKeys, EspSuite, esp_suite
from ..wire.gdoi import KEK_SPI_SIZE
from ..wire.numbers import KekAlgorithm

SCHEMA_VERSION = 2
MAX_PUSH_SEQ = 0xFFFFFFFF  # SEQ is 4 octets (RFC 6407 §5.7)
MIN_TEK_SPI = 256  # ESP SPIs 1-255 are reserved by IANA, 0 for local use (RFC 4303 §2.1)
MAX_TEK_SPI = 0xFFFFFFFF
SENDER_ID_BITS = 16  # NUMBER_OF_SID_BITS of every group: 8, 12 and 16 are the MUSTs of RFC 6054 §3
MAX_SENDER_IDS = 1 << SENDER_ID_BITS

# One list of statements per version step; step i brings user_version i-1 to i.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE grp (
            group_id INTEGER PRIMARY KEY,
            signing_key_pem BLOB NOT NULL,
            created_at REAL NOT NULL)""",
        # kind is 'kek' (16-octet SPI) or 'tek' (4-octet SPI); rows are never deleted.
        """CREATE TABLE issued_spi (
            kind TEXT NOT NULL CHECK (kind IN ('kek', 'tek')),
            spi BLOB NOT NULL,
            group_id INTEGER NOT NULL,
            issued_at REAL NOT NULL,
            PRIMARY KEY (kind, spi))""",
        """CREATE TABLE kek (
            spi BLOB PRIMARY KEY CHECK (length(spi) = 16),
            group_id INTEGER NOT NULL REFERENCES grp(group_id),
            algorithm INTEGER NOT NULL,
            key_bits INTEGER NOT NULL,
            material BLOB NOT NULL,
            lifetime INTEGER NOT NULL,
            created_at REAL NOT NULL,
            activated_at REAL,
            expires_at REAL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired')),
            last_push_seq INTEGER NOT NULL DEFAULT 0)""",
        "CREATE UNIQUE INDEX kek_live ON kek(group_id, state) WHERE state != 'retired'",
        """CREATE TABLE tek (
            spi INTEGER PRIMARY KEY CHECK (spi BETWEEN 256 AND 4294967295),
            group_id INTEGER NOT NULL REFERENCES grp(group_id),
            name TEXT NOT NULL,
            transform INTEGER NOT NULL,
            key_bits INTEGER NOT NULL,
            auth INTEGER,
            encryption_key BLOB NOT NULL,
            integrity_key BLOB NOT NULL,
            lifetime INTEGER NOT NULL,
            created_at REAL NOT NULL,
            activated_at REAL,
            expires_at REAL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired')))""",
        "CREATE UNIQUE INDEX tek_live ON tek(group_id, name, state) WHERE state != 'retired'",
        """CREATE TABLE member (
            group_id INTEGER NOT NULL REFERENCES grp(group_id),
            address TEXT NOT NULL,
            first_registered REAL NOT NULL,
            last_registered REAL NOT NULL,
            last_ack_spi BLOB,
            last_ack_seq INTEGER,
            state TEXT NOT NULL CHECK (state IN ('active', 'inactive', 'removed')),
            reason TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (group_id, address))""",
    ),
    # The next sender ID of each group (RFC 6407 §3.5: allocated sequentially from 0).
    ("ALTER TABLE grp ADD COLUMN next_sender_id INTEGER NOT NULL DEFAULT 0",),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


class StoreError(Exception):
    """The store cannot be opened or a write would break one of its guarantees."""


class SpiReused(StoreError):
    """An SPI that was issued once before; SPIs are never reused, even after retirement."""


class SenderIdsExhausted(StoreError):
    """The group has fewer sender IDs left than were asked for."""


class KeyState(StrEnum):
    PENDING = "pending"  # generated for the next rekey, not yet pushed
    ACTIVE = "active"  # the current key, handed out in PULL replies
    RETIRED = "retired"  # replaced; kept until it expires


class MemberState(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    REMOVED = "removed"


@dataclass(frozen=True)
class KeyTimes:
    """When a key was made and how long it lives; activation starts its lifetime."""

    lifetime: int  # seconds
    created_at: float
    activated_at: float | None = None
    expires_at: float | None = None
    state: KeyState = KeyState.PENDING

    def remaining(self, now: float) -> float:
        """Seconds of life left: the whole lifetime while pending."""
        return self.lifetime if self.expires_at is None else self.expires_at - now


@dataclass(frozen=True)
class StoredKek:
    """A KEK and the 16-octet SPI (CKY-I | CKY-R) of the PUSH messages it protects."""

    group_id: int
    spi: bytes
    kek: Kek
    times: KeyTimes

    def __post_init__(self) -> None:
        # Both halves become ISAKMP cookies, where all-zero means "not chosen yet".
        if len(self.spi) != KEK_SPI_SIZE or not any(self.spi[:8]) or not any(self.spi[8:]):
            raise ValueError("a KEK SPI is 16 octets, CKY-I and CKY-R both non-zero")


@dataclass(frozen=True)
class StoredTek:
    """A TEK: the ESP SA ``name`` (one SA TEK of the group policy) keyed under ``spi``."""

    group_id: int
    name: str
    spi: int
    suite: EspSuite
    keys: EspKeys
    times: KeyTimes

    def __post_init__(self) -> None:
        if not MIN_TEK_SPI <= self.spi <= MAX_TEK_SPI:
            raise ValueError(f"a TEK SPI is {MIN_TEK_SPI}..{MAX_TEK_SPI} (0-255 are reserved)")


@dataclass(frozen=True)
class Member:
    """A group member as the key server last saw it."""

    group_id: int
    address: str
    first_registered: float
    last_registered: float
    state: MemberState = MemberState.ACTIVE
    reason: str = ""
    last_ack_spi: bytes | None = None
    last_ack_seq: int | None = None


@dataclass(frozen=True)
class _Table:
    """What differs between the two key tables; the lifecycle SQL is shared."""

    name: str
    slot: str  # the columns naming a key's slot: one live KEK per group, one TEK per SA name


_KEK = _Table("kek", "group_id")
_TEK = _Table("tek", "group_id, name")

_TIME_COLUMNS = "lifetime, created_at, activated_at, expires_at, state"
_KEK_COLUMNS = f"group_id, spi, algorithm, key_bits, material, {_TIME_COLUMNS}"
_TEK_COLUMNS = (
    f"group_id, name, spi, transform, key_bits, auth, encryption_key, integrity_key, {_TIME_COLUMNS}"
)
_MEMBER_COLUMNS = (
    "group_id, address, first_registered, last_registered, state, reason, last_ack_spi, last_ack_seq"
)


def _times(row: tuple) -> KeyTimes:
    lifetime, created, activated, expires, state = row
    return KeyTimes(lifetime, created, activated, expires, KeyState(state))


def _kek(row: tuple) -> StoredKek:
    group_id, spi, algorithm, key_bits, material = row[:5]
    return StoredKek(
        group_id, spi, Kek.from_material(KekAlgorithm(algorithm), material, key_bits), _times(row[5:])
    )


def _tek(row: tuple) -> StoredTek:
    group_id, name, spi, transform, key_bits, auth, encryption, integrity = row[:8]
    return StoredTek(
        group_id,
        name,
        spi,
        esp_suite(transform, key_bits, auth),
        EspKeys(encryption, integrity),
        _times(row[8:]),
    )


def _member(row: tuple) -> Member:
    group_id, address, first, last, state, reason, ack_spi, ack_seq = row
    return Member(group_id, address, first, last, MemberState(state), reason, ack_spi, ack_seq)


def _create_private(path: Path) -> None:
    """Create ``path`` (and its directory) readable by the owner only, unless it exists."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise StoreError(
                f"{path} holds key material but has mode {mode:04o}; "
                "allow the owner only (chmod 600)"
            ) from None


class KeyStore:
    """One SQLite connection to the key server's database (not shared between threads)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        _create_private(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as problem:
            raise StoreError(f"cannot open the key store {self.path}: {problem}") from None
        try:
            self._open()
        except sqlite3.Error as problem:
            self._db.close()
            raise StoreError(f"{self.path} is not a usable key store: {problem}") from None
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        # Check the version before anything writes to the file (journal_mode=WAL does).
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this groupvpn knows "
                f"up to {SCHEMA_VERSION} (a newer release wrote it)"
            )
        if version == 0 and self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(f"{self.path} is an SQLite database but not a groupvpn key store")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                for statement in _MIGRATIONS[target - 1]:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; committed (and synced) when the block ends without error.

        An ``IntegrityError`` goes to the caller, which knows what the
        conflict means; any other SQLite error becomes a ``StoreError``.
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as problem:
            raise self._failed(problem) from None
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as problem:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                self._db.execute("ROLLBACK")
            if isinstance(problem, sqlite3.Error) and not isinstance(problem, sqlite3.IntegrityError):
                raise self._failed(problem) from None
            raise

    def _query(self, sql: str, parameters: tuple[object, ...]) -> list[tuple]:
        """The rows of a read outside any transaction."""
        try:
            return self._db.execute(sql, parameters).fetchall()
        except sqlite3.Error as problem:
            raise self._failed(problem) from None

    def _failed(self, problem: sqlite3.Error) -> StoreError:
        return StoreError(f"the key store {self.path} failed: {problem}")

    # -- groups and signing keys -------------------------------------------------------------

    def signing_key_pem(self, group_id: int) -> bytes | None:
        """The group's PKCS#8 PEM push-signing key, None before the first one is saved."""
        rows = self._query("SELECT signing_key_pem FROM grp WHERE group_id = ?", (group_id,))
        return rows[0][0] if rows else None

    def create_group(self, group_id: int, signing_key_pem: bytes, now: float) -> None:
        """Record a new group with its signing key; a group's key is never silently replaced."""
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO grp (group_id, signing_key_pem, created_at) VALUES (?, ?, ?)",
                    (group_id, signing_key_pem, now),
                )
        except sqlite3.IntegrityError:
            raise StoreError(f"group {group_id} already has a signing key") from None

    # -- keys --------------------------------------------------------------------------------

    def spi_issued(self, kind: str, spi: bytes) -> bool:
        """Whether a 'kek' or 'tek' SPI (as octets) was ever issued by this store."""
        return bool(self._query("SELECT 1 FROM issued_spi WHERE kind = ? AND spi = ?", (kind, spi)))

    def kek_group(self, spi: bytes) -> int | None:
        """The group a KEK SPI was issued to, also after the KEK is forgotten; None if never issued here."""
        rows = self._query("SELECT group_id FROM issued_spi WHERE kind = 'kek' AND spi = ?", (spi,))
        return rows[0][0] if rows else None

    def _issue(self, db: sqlite3.Connection, kind: str, spi: bytes, group_id: int, now: float) -> None:
        try:
            db.execute("INSERT INTO issued_spi VALUES (?, ?, ?, ?)", (kind, spi, group_id, now))
        except sqlite3.IntegrityError:
            raise SpiReused(f"{kind.upper()} SPI {spi.hex()} was issued before") from None

    def add_kek(self, kek: StoredKek) -> None:
        """Persist a new KEK and claim its SPI, in one transaction."""
        t = kek.times
        try:
            with self._transaction() as db:
                self._issue(db, "kek", kek.spi, kek.group_id, t.created_at)
                db.execute(
                    f"INSERT INTO kek ({_KEK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        kek.group_id,
                        kek.spi,
                        kek.kek.algorithm,
                        len(kek.kek.key) * 8,
                        kek.kek.material,
                        t.lifetime,
                        t.created_at,
                        t.activated_at,
                        t.expires_at,
                        t.state,
                    ),
                )
        except sqlite3.IntegrityError as problem:
            raise StoreError(f"cannot add KEK {kek.spi.hex()} to group {kek.group_id}: {problem}") from None

    def add_tek(self, tek: StoredTek) -> None:
        """Persist a new TEK and claim its SPI, in one transaction."""
        t = tek.times
        try:
            with self._transaction() as db:
                self._issue(db, "tek", tek.spi.to_bytes(4, "big"), tek.group_id, t.created_at)
                db.execute(
                    f"INSERT INTO tek ({_TEK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        tek.group_id,
                        tek.name,
                        tek.spi,
                        tek.suite.transform,
                        tek.suite.key_bits,
                        tek.suite.auth,
                        tek.keys.encryption,
                        tek.keys.integrity,
                        t.lifetime,
                        t.created_at,
                        t.activated_at,
                        t.expires_at,
                        t.state,
                    ),
                )
        except sqlite3.IntegrityError as problem:
            raise StoreError(f"cannot add TEK {tek.spi:#010x} ({tek.name}): {problem}") from None

    def keks(self, group_id: int, state: KeyState | None = None) -> list[StoredKek]:
        """The group's KEKs (oldest first), optionally only those in ``state``."""
        return [_kek(row) for row in self._select("kek", _KEK_COLUMNS, group_id, state)]

    def teks(self, group_id: int, state: KeyState | None = None) -> list[StoredTek]:
        """The group's TEKs (oldest first, then by name), optionally only those in ``state``."""
        return [_tek(row) for row in self._select("tek", _TEK_COLUMNS, group_id, state)]

    def _select(self, table: str, columns: str, group_id: int, state: KeyState | None) -> list[tuple]:
        return self._query(
            f"SELECT {columns} FROM {table} WHERE group_id = ? AND (? IS NULL OR state = ?) "
            "ORDER BY created_at, rowid",
            (group_id, state, state),
        )

    def activate_kek(self, spi: bytes, now: float) -> None:
        """Make a pending KEK current and retire the one it replaces."""
        self._activate(_KEK, spi, now)

    def activate_tek(self, spi: int, now: float) -> None:
        """Make a pending TEK current and retire the one it replaces (same group and SA name)."""
        self._activate(_TEK, spi, now)

    def _activate(self, table: _Table, spi: bytes | int, now: float) -> None:
        with self._transaction() as db:
            row = db.execute(
                f"SELECT rowid, {table.slot} FROM {table.name} WHERE spi = ? AND state = ?",
                (spi, KeyState.PENDING),
            ).fetchone()
            if row is None:
                shown = spi.hex() if isinstance(spi, bytes) else f"{spi:#010x}"
                raise StoreError(f"no pending {table.name.upper()} with SPI {shown}")
            rowid, *slot = row
            where = " AND ".join(f"{column} = ?" for column in table.slot.split(", "))
            db.execute(
                f"UPDATE {table.name} SET state = ? WHERE {where} AND state = ?",
                (KeyState.RETIRED, *slot, KeyState.ACTIVE),
            )
            db.execute(
                f"UPDATE {table.name} SET state = ?, activated_at = ?, expires_at = ? + lifetime "
                "WHERE rowid = ?",
                (KeyState.ACTIVE, now, now, rowid),
            )

    def retire_tek(self, spi: int) -> None:
        """Retire an active TEK that nothing replaces (its SA left the configuration)."""
        with self._transaction() as db:
            if not db.execute(
                "UPDATE tek SET state = ? WHERE spi = ? AND state = ?", (KeyState.RETIRED, spi, KeyState.ACTIVE)
            ).rowcount:
                raise StoreError(f"no active TEK with SPI {spi:#010x}")

    def forget_retired(self, group_id: int, now: float) -> int:
        """Delete retired keys that have expired (their secrets serve no one); SPIs stay issued."""
        with self._transaction() as db:
            return sum(
                db.execute(
                    f"DELETE FROM {table} WHERE group_id = ? AND state = 'retired' AND expires_at <= ?",
                    (group_id, now),
                ).rowcount
                for table in ("kek", "tek")
            )

    # -- push sequence numbers ---------------------------------------------------------------

    def next_push_seq(self, kek_spi: bytes) -> int:
        """Claim the next GROUPKEY-PUSH sequence number under this KEK: 1, 2, ...

        The increment is committed before the value is returned, so a crash
        between here and the send can skip a number but never repeat one.
        """
        with self._transaction() as db:
            row = db.execute(
                "UPDATE kek SET last_push_seq = last_push_seq + 1 "
                "WHERE spi = ? AND last_push_seq < ? RETURNING last_push_seq",
                (kek_spi, MAX_PUSH_SEQ),
            ).fetchone()
        if row is None:
            if self.last_push_seq(kek_spi) == MAX_PUSH_SEQ:
                raise StoreError(f"KEK {kek_spi.hex()} used every sequence number; replace it")
            raise StoreError(f"no KEK with SPI {kek_spi.hex()}")
        return row[0]

    def last_push_seq(self, kek_spi: bytes) -> int:
        """The latest sequence number claimed under this KEK (0 before any PUSH), for PULL's SEQ."""
        rows = self._query("SELECT last_push_seq FROM kek WHERE spi = ?", (kek_spi,))
        if not rows:
            raise StoreError(f"no KEK with SPI {kek_spi.hex()}")
        return rows[0][0]

    # -- sender IDs --------------------------------------------------------------------------

    def allocate_sender_ids(self, group_id: int, count: int) -> tuple[int, ...]:
        """Claim the group's next ``count`` sender IDs (RFC 6407 §3.5: sequential from 0).

        Committed before returned, so no SID is ever given out twice.  The
        counter never goes back: a member keeps its SIDs for every TEK it
        is pushed later (RFC 6054 §3), so a SID is free again only once no
        member can receive a TEK under the rekey SA it was issued with.
        """
        if count < 1:
            raise ValueError(f"cannot allocate {count} sender IDs")
        with self._transaction() as db:
            row = db.execute(
                "UPDATE grp SET next_sender_id = next_sender_id + ? "
                "WHERE group_id = ? AND next_sender_id + ? <= ? RETURNING next_sender_id",
                (count, group_id, count, MAX_SENDER_IDS),
            ).fetchone()
        if row is None:
            rows = self._query("SELECT next_sender_id FROM grp WHERE group_id = ?", (group_id,))
            if not rows:
                raise StoreError(f"no group {group_id}")
            left = MAX_SENDER_IDS - rows[0][0]
            raise SenderIdsExhausted(f"group {group_id} has {left} of its {MAX_SENDER_IDS} sender IDs left")
        return tuple(range(row[0] - count, row[0]))

    # -- members -----------------------------------------------------------------------------

    def register_member(self, group_id: int, address: str, now: float) -> Member:
        """Record a completed registration; a returning member becomes active again.

        A member the administrator removed stays removed: its registration
        is refused until it is re-authorized (set to another state).
        """
        with self._transaction() as db:
            row = db.execute(
                f"""INSERT INTO member (group_id, address, first_registered, last_registered, state)
                    VALUES (?, ?, ?, ?, 'active')
                    ON CONFLICT (group_id, address) DO UPDATE
                    SET last_registered = excluded.last_registered, state = 'active', reason = ''
                    WHERE member.state != 'removed'
                    RETURNING {_MEMBER_COLUMNS}""",
                (group_id, address, now, now),
            ).fetchone()
        if row is None:
            raise StoreError(f"member {address} was removed from group {group_id} and is not re-authorized")
        return _member(row)

    def record_ack(self, group_id: int, address: str, kek_spi: bytes, seq: int) -> Member:
        """Remember the latest GROUPKEY-PUSH a member acknowledged (RFC 8263 §5)."""
        return self._update_member(
            group_id, address, "last_ack_spi = ?, last_ack_seq = ?", (kek_spi, seq)
        )

    def set_member_state(
        self, group_id: int, address: str, state: MemberState, reason: str = ""
    ) -> Member:
        return self._update_member(group_id, address, "state = ?, reason = ?", (state, reason))

    def _update_member(
        self, group_id: int, address: str, assignments: str, values: tuple[object, ...]
    ) -> Member:
        with self._transaction() as db:
            row = db.execute(
                f"UPDATE member SET {assignments} WHERE group_id = ? AND address = ? "
                f"RETURNING {_MEMBER_COLUMNS}",
                (*values, group_id, address),
            ).fetchone()
        if row is None:
            raise StoreError(f"{address} is not a member of group {group_id}")
        return _member(row)

    def member(self, group_id: int, address: str) -> Member | None:
        rows = self._query(
            f"SELECT {_MEMBER_COLUMNS} FROM member WHERE group_id = ? AND address = ?", (group_id, address)
        )
        return _member(rows[0]) if rows else None

    def members(self, group_id: int, state: MemberState | None = None) -> list[Member]:
        rows = self._query(
            f"SELECT {_MEMBER_COLUMNS} FROM member WHERE group_id = ? AND (? IS NULL OR state = ?) "
            "ORDER BY first_registered, address",
            (group_id, state, state),
        )
        return [_member(row) for row in rows]
