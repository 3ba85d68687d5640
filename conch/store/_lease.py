"""One writer per session: fenced leases with a time to live.

A lease is a row on the session (owner, fencing token, expiry). Acquiring it bumps the
token, so every grant — a takeover after expiry, or the same owner acquiring again — fences
out every earlier holder. Writes check the token inside their own transaction, which makes
correctness independent of clocks: a skewed clock can only let a takeover happen early, and
the earlier holder then finds its token stale and cannot write. Expiry decides when a lease
may be taken over; the token decides who may write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from conch.errors import LeaseConflictError, StoreError

DEFAULT_LEASE_TTL_S = 30.0


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof that ``owner`` may write ``session_id``, for as long as ``token`` is current."""

    session_id: str
    owner: str
    token: int
    """The fencing token: grows with every grant on the session and is never reused."""
    expires_at: float
    """When the lease may be taken over (seconds since the epoch, by the store's clock)."""
    ttl_s: float


@dataclass(frozen=True, slots=True)
class LeaseState:
    """The lease columns of a session row."""

    owner: str | None
    token: int
    expires_at: float


def check_ttl(ttl_s: float) -> float:
    if not isinstance(ttl_s, int | float) or not math.isfinite(ttl_s) or ttl_s <= 0:
        raise StoreError(f"a lease TTL must be a positive number of seconds, got {ttl_s!r}")
    return float(ttl_s)


def check_owner(owner: object) -> str:
    if not isinstance(owner, str) or not owner or len(owner) > 255:
        raise StoreError(
            f"a lease owner must be a non-empty string of at most 255 characters, got {owner!r}; "
            "use something unique per writer, e.g. 'hostname:pid:uuid'"
        )
    return owner


def grant(session_id: str, state: LeaseState, owner: str, ttl_s: float, now: float) -> Lease:
    """The lease ``owner`` gets, or ``LeaseConflictError`` if another writer holds it."""
    held = state.owner is not None and state.expires_at > now
    if held and state.owner != owner:
        raise LeaseConflictError(
            f"session {session_id!r} is being written by {state.owner!r} (lease token "
            f"{state.token}, expires in {state.expires_at - now:.1f} s); only one writer per "
            "session: wait for that writer to release the lease or for it to expire, "
            "then acquire again"
        )
    # The same owner acquiring again gets a new token: a restarted writer reclaims its
    # session at once, and whatever its earlier incarnation still holds is fenced out.
    return Lease(session_id, owner, state.token + 1, now + ttl_s, ttl_s)


def check_current(lease: Lease, state: LeaseState, action: str) -> None:
    """Raise ``LeaseConflictError`` unless ``lease`` is the session's current lease.

    An expired lease nobody has taken over is still current: no one else can have written.
    """
    if state.token == lease.token and state.owner == lease.owner:
        return
    if state.token == lease.token:  # same grant, owner cleared: released
        raise LeaseConflictError(
            f"cannot {action}: the lease on session {lease.session_id!r} (token {lease.token}) "
            "was released; acquire a new lease first"
        )
    holder = f"by {state.owner!r}" if state.owner else "and released since"
    raise LeaseConflictError(
        f"cannot {action}: the lease of {lease.owner!r} on session {lease.session_id!r} "
        f"(token {lease.token}) was taken over {holder} (token {state.token}); nothing was "
        "written. Reload the session and acquire a new lease before writing again"
    )
