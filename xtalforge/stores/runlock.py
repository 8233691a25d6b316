"""One runner per campaign: a lease document in the ``campaigns`` store.

A run of a campaign holds a **lease**: one document ``{_id: "runlock:<campaign id>", campaign
lock fields ...}`` in the campaign's ``campaigns`` store, holding the owner (host, pid, the
process's start time, a random token), when it was acquired, its last heartbeat and when it
expires. While the run goes on, a background thread renews the heartbeat every
``heartbeat_s`` seconds (``expires_at = heartbeat + ttl_s``); the run deletes the lease when it
ends, whatever the outcome.

Acquiring is atomic on every store xtalforge builds:

* the lease is created with ``insert_one`` on its fixed ``_id``: of two runs that start together
  only one insert succeeds (the ``_id`` is unique on MongoDB, mongomock and montydb);
* a lease whose holder is **dead** is taken over with a compare-and-set on its token
  (``find_one_and_update({_id, token: old}, ...)``). The holder is dead when it ran on this host
  and its process is gone (or is another process with the same pid), or, for a holder on another
  host, when its lease expired (no heartbeat for ``ttl_s`` seconds);
* on the embedded store (montydb on sqlite, whose updates are not atomic across processes) the
  read-decide-write step runs under an exclusive ``flock`` on a file next to the database.

A second run while the lease is alive raises :class:`CampaignLocked`, naming the holder.
:func:`run_state` tells ``xtalforge status`` whether a campaign recorded as ``running`` is
really running, or was interrupted (its process was killed) and should be resumed.

Lease documents carry no ``campaign_id`` field, so campaign queries never see them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

from jobflow import JobStore

from xtalforge.stores.config import additional

logger = logging.getLogger(__name__)

#: Seconds between heartbeats of a running campaign.
HEARTBEAT_S = 30.0
#: Seconds without a heartbeat after which a lease held on another host is considered dead.
TTL_S = 120.0


class CampaignLocked(RuntimeError):
    """Another live process is running this campaign."""

    def __init__(self, campaign_id: str, holder: dict[str, Any]) -> None:
        self.campaign_id = campaign_id
        self.holder = holder
        super().__init__(
            f"campaign {campaign_id!r} is already being run by {describe_holder(holder)}; "
            "wait for that run to finish (xtalforge status shows it), or stop it and run again"
        )


def lock_id(campaign_id: str) -> str:
    """Return the ``_id`` of a campaign's lease document."""
    return f"runlock:{campaign_id}"


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _iso(t: _dt.datetime) -> str:
    return t.isoformat(timespec="seconds")


def _parse(text: str | None) -> _dt.datetime | None:
    if not text:
        return None
    try:
        t = _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def process_start_time(pid: int) -> str | None:
    """Return an opaque start-time stamp of a process (distinguishes a reused pid), or ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            import psutil

            return f"{psutil.Process(pid).create_time():.2f}"
        except Exception:  # noqa: BLE001 - psutil absent or the process is gone
            return None
    # field 22 (starttime) after the parenthesised command name, which may hold spaces
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Return whether process ``pid`` on this host is alive (and started at ``start``, if given)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    except (OSError, ValueError, TypeError):
        return False
    if start is not None:
        now_start = process_start_time(int(pid))
        if now_start is not None and now_start != start:
            return False  # the pid was reused by another process
    # a zombie (killed, not yet reaped) is dead too
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except OSError:
        pass
    return True


def holder_alive(holder: dict[str, Any], now: _dt.datetime | None = None) -> bool:
    """Return whether a lease's holder still runs.

    On this host the process itself is checked (a killed run is dead at once); on another host
    the lease is alive until ``expires_at``.
    """
    if holder.get("host") == socket.gethostname() and holder.get("pid") is not None:
        return pid_alive(holder["pid"], holder.get("pid_start"))
    expires = _parse(holder.get("expires_at"))
    return expires is not None and expires > (now or _utcnow())


def describe_holder(holder: dict[str, Any]) -> str:
    """Return ``"pid P on host H (since T, last heartbeat N s ago)"``."""
    beat = _parse(holder.get("heartbeat_at"))
    ago = f", last heartbeat {(_utcnow() - beat).total_seconds():.0f} s ago" if beat else ""
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')} "
        f"(since {holder.get('acquired_at')}{ago})"
    )


def get_lock(store: JobStore, campaign_id: str) -> dict[str, Any] | None:
    """Return a campaign's lease document, or ``None`` when no run holds it."""
    coll = _collection(additional(store, "campaigns"))
    if coll is not None:
        return coll.find_one({"_id": lock_id(campaign_id)})
    return additional(store, "campaigns").query_one({"_id": lock_id(campaign_id)})


def run_state(store: JobStore, record: dict[str, Any]) -> tuple[str, str | None]:
    """Return ``(status, note)`` of a campaign record, checking that a ``running`` run is alive.

    A record says ``running`` while its run holds the lease. When the lease is gone, or its
    holder died (killed, machine rebooted, no heartbeat for the lease's TTL), the status is
    ``interrupted`` and the note says how to resume; for a live run, the note names it.
    """
    status = record.get("status") or "unknown"
    if status != "running":
        return status, None
    holder = get_lock(store, record["campaign_id"])
    runs = record.get("runs") or [{}]
    last = runs[-1]
    command = last.get("command")
    resume = f"run `{command}` again" if command else "run the same command again"
    if holder is None or not holder_alive(holder):
        who = describe_holder(holder) if holder else f"pid {last.get('pid')} on host " \
            f"{last.get('host')} (started {last.get('started_at')})"
        return "interrupted", (
            f"the run by {who} stopped without finishing (killed?); {resume} to resume: "
            "finished jobs are kept and not redone"
        )
    return "running", f"run by {describe_holder(holder)}"


def _collection(store):
    """Return the pymongo-like collection under a maggma store (connecting it), or ``None``."""
    try:
        store.connect()
    except Exception:  # noqa: BLE001 - some stores connect lazily or are already connected
        pass
    return getattr(store, "_collection", None)


@contextlib.contextmanager
def _local_mutex(store):
    """Serialise read-decide-write on a montydb (embedded) store across processes."""
    path = getattr(store, "database_path", None)
    if path is None or type(store).__name__ != "MontyStore":
        yield
        return
    import fcntl

    lock_file = Path(path) / ".xtalforge-runlock.flock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_duplicate(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name in ("DuplicateKeyError", "StorageDuplicateKeyError") or (
        "duplicate key" in str(exc).lower() or "E11000" in str(exc)
    )


class RunLock:
    """A campaign's run lease (see the module docstring); use as a context manager.

    Parameters
    ----------
    store
        The campaign's JobStore.
    campaign_id
        Campaign id.
    ttl_s
        Seconds without a heartbeat after which a lease held on another host is dead.
    heartbeat_s
        Seconds between heartbeats.
    command
        The command line of the run, stored on the lease (for ``xtalforge status``).
    """

    def __init__(
        self,
        store: JobStore,
        campaign_id: str,
        ttl_s: float = TTL_S,
        heartbeat_s: float = HEARTBEAT_S,
        command: str | None = None,
    ) -> None:
        self.store = store
        self.campaign_id = campaign_id
        self.ttl_s = float(ttl_s)
        self.heartbeat_s = float(heartbeat_s)
        self.command = command
        self.token = uuid.uuid4().hex
        self.took_over: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lease document
    def _doc(self) -> dict[str, Any]:
        t = _utcnow()
        return {
            "_id": lock_id(self.campaign_id),
            "lock_for": self.campaign_id,
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": process_start_time(os.getpid()),
            "command": self.command,
            "acquired_at": _iso(t),
            "heartbeat_at": _iso(t),
            "expires_at": _iso(t + _dt.timedelta(seconds=self.ttl_s)),
        }

    def acquire(self) -> RunLock:
        """Take the lease or raise :class:`CampaignLocked`; start the heartbeat."""
        campaigns = additional(self.store, "campaigns")
        coll = _collection(campaigns)
        if coll is None:  # not a Mongo-like store: best effort, without atomicity
            logger.warning("campaign %s: the campaigns store has no collection; the run lock "
                           "is not atomic", self.campaign_id)
            held = campaigns.query_one({"_id": lock_id(self.campaign_id)})
            if held and held.get("token") != self.token and holder_alive(held):
                raise CampaignLocked(self.campaign_id, held)
            campaigns.update([self._doc()], key="_id")
            self._start_heartbeat()
            return self
        with _local_mutex(campaigns):
            mine = self._doc()
            try:
                coll.insert_one(dict(mine))
            except Exception as exc:  # noqa: BLE001 - DuplicateKeyError of pymongo/montydb
                if not _is_duplicate(exc):
                    raise
                held = coll.find_one({"_id": mine["_id"]})
                if held is None:  # released in between: try once more
                    coll.insert_one(dict(mine))
                elif holder_alive(held):
                    raise CampaignLocked(self.campaign_id, held) from None
                else:
                    new = {k: v for k, v in mine.items() if k != "_id"}
                    got = coll.find_one_and_update(
                        {"_id": mine["_id"], "token": held.get("token")}, {"$set": new}
                    )
                    if got is None:  # someone else took it over first
                        raise CampaignLocked(
                            self.campaign_id, coll.find_one({"_id": mine["_id"]}) or held
                        ) from None
                    self.took_over = {k: v for k, v in held.items() if k != "_id"}
                    logger.warning(
                        "campaign %s: took over the run lock of a dead run (%s)",
                        self.campaign_id,
                        describe_holder(held),
                    )
        self._start_heartbeat()
        return self

    def release(self) -> None:
        """Stop the heartbeat and delete the lease (only if it is still this run's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
        campaigns = additional(self.store, "campaigns")
        coll = _collection(campaigns)
        try:
            with _local_mutex(campaigns):
                if coll is not None:
                    coll.delete_one({"_id": lock_id(self.campaign_id), "token": self.token})
                else:
                    campaigns.remove_docs({"_id": lock_id(self.campaign_id),
                                           "token": self.token})
        except Exception:  # noqa: BLE001 - an expired lease is harmless; keep the run's outcome
            logger.exception("campaign %s: could not release the run lock", self.campaign_id)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # ------------------------------------------------------------------ heartbeat
    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(
            target=self._beat, name=f"xtalforge-runlock-{self.campaign_id}", daemon=True
        )
        self._thread.start()

    def _heartbeat_store(self):
        """Return the campaigns store for the heartbeat thread (own connection for montydb)."""
        campaigns = additional(self.store, "campaigns")
        if type(campaigns).__name__ == "MontyStore":  # sqlite: one connection per thread
            clone = type(campaigns).from_dict(campaigns.as_dict())
            clone.connect()
            return clone
        return campaigns

    def _beat(self) -> None:
        try:
            campaigns = self._heartbeat_store()
        except Exception:  # noqa: BLE001 - no heartbeat: the lease expires after its TTL
            logger.exception("campaign %s: run lock heartbeat cannot start", self.campaign_id)
            return
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.renew(campaigns):
                    logger.error("campaign %s: this run lost its lock (taken over by another "
                                 "run after missed heartbeats)", self.campaign_id)
                    return
            except Exception:  # noqa: BLE001 - keep beating; the run itself goes on
                logger.exception("campaign %s: run lock heartbeat failed", self.campaign_id)

    def renew(self, campaigns=None) -> bool:
        """Renew the lease's heartbeat and expiry; return ``False`` when it is no longer ours."""
        campaigns = campaigns if campaigns is not None else additional(self.store, "campaigns")
        t = _utcnow()
        with _local_mutex(campaigns):
            res = _collection(campaigns).update_one(
                {"_id": lock_id(self.campaign_id), "token": self.token},
                {"$set": {"heartbeat_at": _iso(t),
                          "expires_at": _iso(t + _dt.timedelta(seconds=self.ttl_s))}},
            )
        return getattr(res, "matched_count", 1) > 0
