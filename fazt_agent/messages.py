"""The words of notifications and halts, shaped by the agent's personality.

helpful: full sentences and the next step; terse: the facts in one line each; cautious: the
facts plus what could go wrong. The facts (what is wrong, the plan, the options, the halt id,
how to answer) are always there: personality changes tone, never content.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import Personality

if TYPE_CHECKING:
    from .halt.store import Halt
    from .incidents import Incident
    from .kernel.base import Plan

MAX_STEPS_SHOWN = 15


def where(incident: Incident) -> str:
    return f"{incident.check} {incident.target}".strip()


def steps(plan: Plan, halt_id: int | str = "ID", limit: int | None = MAX_STEPS_SHOWN) -> str:
    """The plan's steps, one a line: the first `limit` and how many more (all with `limit=None`)."""
    shown = plan.steps if limit is None else plan.steps[:limit]
    lines = [f"  - {s}" for s in shown]
    if len(plan.steps) > len(shown):
        lines.append(f"  ... and {len(plan.steps) - len(shown)} more (fazt-agent halts show {halt_id})")
    return "\n".join(lines)


def all_steps(halt: Halt) -> str:
    """A halt's text with every step of its plan (`halts show`): the stored body lists the first
    MAX_STEPS_SHOWN and points here for the rest."""
    for ident in (halt.id, "ID"):  # the body is written before and after the halt has its id
        short = steps(halt.plan, ident)
        if len(halt.plan.steps) > MAX_STEPS_SHOWN and short in halt.body:
            return halt.body.replace(short, steps(halt.plan, limit=None))
    return halt.body


def incident_notice(incident: Incident, reason: str, personality: Personality, host: str,
                    plan: Plan | None = None) -> tuple[str, str]:
    """Title and body telling the owner about a problem the agent will not fix by itself."""
    flapping = ", flapping" if incident.flapping_since is not None else ""
    title = f"[{host}] {incident.severity}{flapping}: {where(incident)}"
    facts = [f"{where(incident)} is {incident.severity}: {incident.message}"]
    if plan is not None and not plan.noop:
        facts.append(f"Proposed: {plan.summary} (not done: {reason})")
    else:
        facts.append(f"Not acting: {reason}")
    if personality == "terse":
        return title, "\n".join(facts)
    if personality == "cautious":
        facts.append("Nothing was changed on the server. Check it before acting; "
                     "`fazt-agent incidents show {}` has the details.".format(incident.id))
        return title, "\n\n".join(facts)
    facts.append(f"I am keeping an eye on it. Details: fazt-agent incidents show {incident.id}")
    return title, "\n\n".join(facts)


def halt_request(halt_id: int | None, incident: Incident | None, plan: Plan, reason: str, options: list[str],
                 default: str, expires: str, personality: Personality, host: str) -> tuple[str, str]:
    """Title and body of an approval request: what is wrong, the exact plan, how to answer."""
    subject = where(incident) if incident else plan.action
    title = f"[{host}] approval needed: {plan.summary}"
    ident = halt_id if halt_id is not None else "ID"
    lines = []
    if incident is not None:
        lines.append(f"Problem: {subject} is {incident.severity}: {incident.message}")
    lines.append(f"Plan: {plan.summary} (risk: {plan.risk}, {'reversible' if plan.reversible else 'not reversible'})")
    if plan.steps:
        lines.append(steps(plan, ident))
    lines.append(f"Why I ask: {reason}")
    lines.append(f"Options: {', '.join(options)} (default on timeout: {default}, expires {expires})")
    lines.append(f"Answer: fazt-agent approve {ident}  |  fazt-agent deny {ident}  |  "
                 f"fazt-agent halts answer {ident} OPTION  (halt {ident})")
    if personality == "terse":
        return title, "\n".join(lines)
    if personality == "cautious":
        lines.insert(0, "Nothing has been done yet, and nothing will be without your answer.")
        if plan.deletes:
            lines.insert(1, "This plan deletes data; it cannot be undone.")
    else:
        lines.insert(0, "I would like to fix this, but the policy says to ask you first.")
    return title, "\n".join(lines)


def halt_reminder(halt: Halt, personality: Personality, host: str) -> tuple[str, str]:
    title = f"[{host}] reminder: approval needed: {halt.plan.summary}"
    body = (f"Halt {halt.id} expires at {halt.expires_at:%Y-%m-%d %H:%M} UTC; then '{halt.default_option}' applies.\n\n"
            + halt.body)
    return title, body


def halt_closed(halt: Halt, host: str) -> tuple[str, str]:
    """Every channel's notice that a halt is over: who answered what, through which channel, when
    (or that it expired to its default, or was withdrawn)."""
    when = f"{halt.answered_at:%Y-%m-%d %H:%M} UTC" if halt.answered_at else "?"
    if halt.status == "answered":
        title = f"[{host}] answered: {halt.answer} by {halt.answered_by_via}: {halt.plan.summary}"
        body = f"Halt {halt.id} was answered '{halt.answer}' by {halt.answered_by_via} at {when}."
    elif halt.status == "expired":
        title = f"[{host}] expired: {halt.plan.summary}"
        body = (f"Halt {halt.id} got no answer by {halt.expires_at:%Y-%m-%d %H:%M} UTC; "
                f"the default '{halt.default_option}' applied.")
    else:
        title = f"[{host}] withdrawn: {halt.plan.summary}"
        body = f"Halt {halt.id} was withdrawn at {when}: {halt.note}. Nothing to answer."
    return title, body


def action_report(summary: str, ok: bool, message: str, incident: Incident | None, host: str,
                  changed: bool = True) -> tuple[str, str]:
    """An action's result. One that went without error but changed nothing is "nothing done", never "done"."""
    status = "FAILED" if not ok else "done" if changed else "nothing done"
    title = f"[{host}] {status}: {summary}"
    body = f"{summary}: {message}"
    if incident is not None:
        body += f"\nIncident: {where(incident)} ({incident.severity}: {incident.message})"
    return title, body
