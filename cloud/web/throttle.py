"""Progressive back-off of dashboard sign-in (instead of a lock-out), counted in the database.

Three counts of failed sign-ins within ``login_window_minutes`` (table ``login_failures``: SHA-256 of the
lower-case e-mail, client address, time):

* this e-mail from this address (free: ``login_max_failures``),
* this address, any e-mail (free: ``login_address_max_failures``): one password sprayed over many e-mails,
* this e-mail, any address (free: ``login_account_max_failures``): guessing from many addresses. A browser
  that signed in to this e-mail before carries a signed *device cookie* and is exempt from this count
  (OWASP, "Slow Down Online Guessing Attacks with Device Cookies"), so someone guessing elsewhere cannot
  lock the owner out.

Once a count reaches its free allowance, each further attempt must wait ``login_backoff_seconds`` ×
2^(failures − allowance) after the latest failure of that count (at most ``login_backoff_max_seconds``).
During the wait the password is not even checked (429 with ``Retry-After``); afterwards the right password
works again. Failures older than the window are deleted, so the table stays bounded.

Simultaneous attempts cannot outrun the counts: each attempt is recorded (committed) as a failure *before* the
counts are read (:func:`record_failure`), and :func:`backoff_wait` counts every other recorded attempt, finished
or still in flight. An attempt is checked only when it sees fewer others than the allowance, and it sees every
checked attempt committed before it (their records stay), so of N simultaneous guesses at most the allowance
are checked, on SQLite and PostgreSQL alike (a burst may even have fewer checked: in-flight attempts count too).
A refused attempt's record is deleted (:func:`forget_attempt`: a 429 is not a failure and does not lengthen the
wait), and a successful sign-in deletes it with the others (:func:`clear_failures`).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from flask import current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, func, select

from dangol_cloud.models import LoginFailure
from dangol_cloud.settings import Settings

__all__ = ["DEVICE_COOKIE", "backoff_wait", "clear_failures", "client_address", "device_cookie",
           "email_key", "forget_attempt", "record_failure", "trusted_device"]

#: Name of the signed cookie listing the e-mails (as SHA-256) that signed in from this browser.
DEVICE_COOKIE = "dangol_device"
#: How long a device cookie is honoured, seconds (30 days).
DEVICE_COOKIE_MAX_AGE = 30 * 24 * 3600
#: At most this many accounts remembered per browser (a shared till: the owner and a few staff).
DEVICE_COOKIE_ACCOUNTS = 5
_SALT = "dangol-login-device"


def email_key(email: str) -> str:
    """SHA-256 hex of the lower-case e-mail (what ``login_failures`` and the device cookie hold)."""
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


def client_address() -> str:
    """The client's address as the app sees it (after ``ProxyFix`` when ``trusted_proxies`` is set), ≤ 64 chars."""
    return (request.remote_addr or "-")[:64]


def _wait(settings: Settings, failures: int, free: int, last: datetime | None, now: datetime) -> float:
    if failures < free or last is None:
        return 0.0
    delay = min(settings.login_backoff_max_seconds, settings.login_backoff_seconds * 2 ** min(failures - free, 30))
    return max(0.0, (last + timedelta(seconds=delay) - now).total_seconds())


def backoff_wait(session, settings: Settings, key: str, addr: str, *, trusted: bool, now: datetime,
                 attempt: int | None = None) -> float:
    """Seconds this sign-in attempt must still wait (0.0: go ahead and check the password).

    Args:
        key: :func:`email_key` of the e-mail typed; addr: :func:`client_address`.
        trusted: the browser holds a device cookie for this e-mail (exempt from the per-e-mail count).
        now: the current time, UTC.
        attempt: the id of this attempt's own record (:func:`record_failure`, committed first), left out of the
            counts; every other record counts, including simultaneous attempts still in flight.
    """
    since = now - timedelta(minutes=settings.login_window_minutes)
    scopes = [(settings.login_max_failures, (LoginFailure.email_sha256 == key, LoginFailure.remote_addr == addr)),
              (settings.login_address_max_failures, (LoginFailure.remote_addr == addr,))]
    if not trusted:
        scopes.append((settings.login_account_max_failures, (LoginFailure.email_sha256 == key,)))
    others = () if attempt is None else (LoginFailure.id != attempt,)
    wait = 0.0
    for free, where in scopes:
        n, last = session.execute(select(func.count(), func.max(LoginFailure.at))
                                  .where(*where, *others, LoginFailure.at >= since)).one()
        wait = max(wait, _wait(settings, n, free, last, now))
    return wait


def record_failure(session, settings: Settings, key: str, addr: str, now: datetime) -> int:
    """Count one sign-in attempt as failed and delete failures older than the window; returns the record's id
    (for :func:`backoff_wait` and :func:`forget_attempt`). The caller commits, before reading the counts."""
    session.execute(delete(LoginFailure).where(
        LoginFailure.at < now - timedelta(minutes=settings.login_window_minutes)))
    failure = LoginFailure(email_sha256=key, remote_addr=addr, at=now)
    session.add(failure)
    session.flush()
    return failure.id


def forget_attempt(session, attempt: int) -> None:
    """Delete the record of an attempt refused without a password check (the caller commits)."""
    session.execute(delete(LoginFailure).where(LoginFailure.id == attempt))


def attempt_or_wait(session, settings: Settings, key: str, addr: str, now: datetime) -> tuple[int, float]:
    """Record a password attempt as failed and commit it *before* counting, so simultaneous guesses see each other
    and cannot all pass on one count; then the back-off. Returns ``(attempt id, seconds to wait)``; with a wait the
    attempt is forgotten again (a refusal without a password check is not a failure) and the caller answers 429.
    Used by the sign-in and by a password change (the current password is guessed no faster)."""
    attempt = record_failure(session, settings, key, addr, now)
    session.commit()
    wait = backoff_wait(session, settings, key, addr, trusted=trusted_device(key), now=now, attempt=attempt)
    if wait > 0:
        forget_attempt(session, attempt)
        session.commit()
    return attempt, wait


def clear_failures(session, key: str, addr: str) -> None:
    """Forget this e-mail's failures from this address after a successful sign-in (the caller commits)."""
    session.execute(delete(LoginFailure).where(LoginFailure.email_sha256 == key, LoginFailure.remote_addr == addr))


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=_SALT)


def _cookie_keys() -> list[str]:
    raw = request.cookies.get(DEVICE_COOKIE)
    if not raw or len(raw) > 4096:
        return []
    try:
        keys = _serializer().loads(raw, max_age=DEVICE_COOKIE_MAX_AGE)
    except BadSignature:  # also SignatureExpired; a forged or stale cookie is simply not trusted
        return []
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []


def trusted_device(key: str) -> bool:
    """True if this browser's device cookie (valid signature, ≤ 30 days old) lists the e-mail ``key``."""
    return key in _cookie_keys()


def device_cookie(key: str) -> str:
    """The device cookie's new value after a successful sign-in of ``key`` (most recent first, ≤ 5 accounts)."""
    keys = [key] + [k for k in _cookie_keys() if k != key]
    return _serializer().dumps(keys[:DEVICE_COOKIE_ACCOUNTS])
