"""The policy gate, as pure functions: (incident, plan, autonomy, history, now) -> verdict.

No I/O and no clock reads here: the engine passes everything in. The order of the judgement:

1. the rule's verdict for the level (or the brief's default for the plan's risk);
2. the level's ceiling for the plan's risk — low: notify; medium: act on safe plans, ask for
   destructive or costly ones; high: act on all but costly plans and destructive deletion,
   which always ask. A rule may be stricter than the ceiling, never looser;
3. an empty plan only notifies;
4. cooldown and the maximum number of actions per window turn `act`/`ask` into `notify`
   (the owner hears the action is being held back);
5. a maintenance window holds every action (`notify`, delivered silently); quiet hours turn
   `act` on anything but a safe, reversible plan into `ask`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from ..kernel.base import Plan
from ..units import format_duration
from .model import DAYS, Defaults, Level, Rule, Schedule, Verdict, Window, parse_clock

PERMISSIVE: dict[str, int] = {"deny": 0, "notify": 1, "ask": 2, "act": 3}


@dataclass(frozen=True)
class History:
    """What the engine knows about earlier actions of this rule on this incident's key."""

    last_action_at: datetime | None = None
    actions_in_window: int = 0


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    quiet: bool = False          # notify without sending (maintenance window)
    retry_at: datetime | None = None  # when a held-back action may be decided again


def stricter(a: Verdict, b: Verdict) -> Verdict:
    return a if PERMISSIVE[a] <= PERMISSIVE[b] else b


def ceiling(level: Level, plan: Plan) -> tuple[Verdict, str]:
    """The most the brief allows at `level` for this plan, with the reason."""
    if level == "low":
        return "notify", "autonomy is low: notify only"
    if level == "medium":
        if plan.risk == "safe":
            return "act", f"autonomy is medium and the plan is safe"
        return "ask", f"autonomy is medium and the plan is {plan.risk}"
    if plan.risk == "costly":
        return "ask", "autonomy is high but the plan costs money: always ask"
    if plan.deletes and plan.risk != "safe":
        return "ask", "autonomy is high but the plan deletes data: always ask"
    return "act", f"autonomy is high and the plan is {plan.risk}"


def judge(rule: Rule | None, plan: Plan, level: Level, history: History, now: datetime,
          schedule: Schedule, defaults: Defaults) -> Judgement:
    """The verdict on `plan` proposed by `rule` (None for a manual or LLM proposal)."""
    top, reason = ceiling(level, plan)
    wanted = getattr(rule.verdicts, level) if rule else None
    verdict: Verdict = top
    if wanted is not None and PERMISSIVE[wanted] < PERMISSIVE[top]:
        verdict, reason = wanted, f"rule {rule.name!r} says {wanted} at {level} autonomy"  # type: ignore[union-attr]
    if plan.noop and verdict in ("act", "ask"):
        return Judgement("notify", f"nothing to do: {plan.summary}")
    if verdict in ("act", "ask"):
        cooldown = (rule.cooldown if rule and rule.cooldown is not None else defaults.cooldown)
        if history.last_action_at is not None and now - history.last_action_at < timedelta(seconds=cooldown):
            until = history.last_action_at + timedelta(seconds=cooldown)
            return Judgement("notify", f"cooldown: the same action ran at {history.last_action_at:%H:%M} "
                                       f"and may run again after {until:%H:%M} UTC", retry_at=until)
        limit = rule.max_actions if rule and rule.max_actions is not None else defaults.max_actions
        window = rule.window if rule and rule.window is not None else defaults.window
        if history.actions_in_window >= limit:
            return Judgement("notify", f"limit: {history.actions_in_window} actions in the last "
                                       f"{format_duration(window)} (at most {limit})",
                             retry_at=now + timedelta(seconds=window / 4))
        window_end = in_maintenance(schedule, now)
        if window_end is not None:
            return Judgement("notify", f"maintenance window until {window_end:%Y-%m-%d %H:%M} {schedule.timezone}: "
                                       "actions are held", quiet=True, retry_at=window_end)
        if verdict == "act" and in_quiet_hours(schedule, now) and not (plan.risk == "safe" and plan.reversible):
            return Judgement("ask", "quiet hours: only safe, reversible plans run without asking")
    return Judgement(verdict, reason)


def retry_delay(defaults: Defaults, failures: int) -> float | None:
    """Seconds to wait before deciding again on an incident whose safe action has now failed
    `failures` times (this one included), or None when no attempt is left."""
    if failures >= defaults.retry_attempts:
        return None
    backoff = defaults.retry_backoff
    return backoff[min(failures, len(backoff)) - 1]


def _local(schedule: Schedule, now: datetime) -> datetime:
    return now.astimezone(ZoneInfo(schedule.timezone))


def in_quiet_hours(schedule: Schedule, now: datetime) -> bool:
    local = _local(schedule, now).time().replace(second=0, microsecond=0)
    for item in schedule.quiet_hours:
        start, end = (parse_clock(part) for part in item.split("-"))
        if (start <= local < end) if start <= end else (local >= start or local < end):
            return True
    return False


def in_maintenance(schedule: Schedule, now: datetime) -> datetime | None:
    """The end of the maintenance window `now` falls in (aware, local time), or None."""
    local = _local(schedule, now)
    for item in schedule.maintenance:
        if isinstance(item, Window):
            zone = ZoneInfo(schedule.timezone)
            start = datetime.fromisoformat(item.start)
            end = datetime.fromisoformat(item.end)
            start = start if start.tzinfo else start.replace(tzinfo=zone)
            end = end if end.tzinfo else end.replace(tzinfo=zone)
            if start <= now < end:
                return end
            continue
        day, hours = item.lower().split(" ")
        start_t, end_t = (parse_clock(part) for part in hours.split("-"))
        for back in (0, 1):  # a window may have started yesterday and run past midnight
            d = (local - timedelta(days=back)).date()
            if DAYS[d.weekday()] != day:
                continue
            start = datetime.combine(d, start_t, local.tzinfo)
            end = datetime.combine(d if end_t > start_t else d + timedelta(days=1), end_t, local.tzinfo)
            if start <= local < end:
                return end
    return None


Trigger = Literal["opened", "worsened", "action_ineffective", "action_failed", "retry", "interrupted", "manual"]
