"""When to renew and how worried to be: pure functions of a certificate's dates and `now`.

The renewal time follows certbot's default (`_default_renewal_time`): when less than a third
of the lifetime remains, or half for lifetimes under 10 days (90-day certificates renew with
30 days left, 6-day ones with 3). An owner's `renew_before` replaces it with a fixed margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from ..units import format_duration

DAY = 86400.0
SHORT_LIFETIME = timedelta(days=10)


def renewal_time(not_before: datetime, not_after: datetime, renew_before: float | None = None) -> datetime:
    """When a certificate valid from `not_before` to `not_after` should be renewed."""
    if renew_before is not None:
        return not_after - timedelta(seconds=renew_before)
    lifetime = not_after - not_before
    return not_after - (lifetime / 2 if lifetime < SHORT_LIFETIME else lifetime / 3)


def days_left(not_after: datetime, now: datetime) -> float:
    """Days until `not_after` (negative once expired)."""
    return (not_after - now).total_seconds() / DAY


@dataclass(frozen=True)
class Expiry:
    """The judgement of one certificate's dates."""

    status: Literal["ok", "unknown", "warning", "critical"]
    message: str
    days_left: float
    renew_at: datetime
    in_window: bool


def judge_expiry(not_before: datetime, not_after: datetime, now: datetime, *, warning: float | None,
                 critical: float | None, renew_before: float | None = None) -> Expiry:
    """ok, or warning (in the renewal window, or `warning` days or fewer left), or critical
    (`critical` days or fewer left, or expired).

    A certificate not valid yet by this host's clock is `unknown`, never in its renewal window:
    a CA dates what it issues by its own clock, so when the host's clock is behind, every new
    certificate would be "not valid yet" too and renewing would loop (using up the CA's rate
    limits) without fixing anything. The owner is told to look at the clock instead."""
    left = days_left(not_after, now)
    renew_at = renewal_time(not_before, not_after, renew_before)
    in_window = now >= renew_at
    if left <= 0:
        return Expiry("critical", f"expired {_ago(-left)} ago ({not_after:%Y-%m-%d %H:%M} UTC)", left, renew_at, True)
    if now < not_before:
        return Expiry("unknown", f"not valid before {not_before:%Y-%m-%d %H:%M} UTC by this host's clock "
                                 f"(now {now:%Y-%m-%d %H:%M} UTC): is the clock right?", left, renew_at, False)
    text = f"{_ago(left)} left (until {not_after:%Y-%m-%d})"
    if critical is not None and left <= critical:
        return Expiry("critical", f"{text}, at or below the critical {critical:g} days", left, renew_at, in_window)
    if in_window:
        return Expiry("warning", f"{text}: in its renewal window since {renew_at:%Y-%m-%d %H:%M} UTC",
                      left, renew_at, True)
    if warning is not None and left <= warning:
        return Expiry("warning", f"{text}, at or below the warning {warning:g} days", left, renew_at, False)
    return Expiry("ok", f"{text}, renewal from {renew_at:%Y-%m-%d}", left, renew_at, False)


def _ago(days: float) -> str:
    return f"{days:.1f} days" if days >= 1 else format_duration(round(days * DAY))
