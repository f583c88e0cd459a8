"""Test-only fault injection: kill this process at a named point, so crash tests reach each point
deterministically instead of sleeping and hoping.

`FAZT_AGENT_CRASH_AT=POINT[,POINT...]` makes the first process that reaches POINT (the daemon, a CLI
command, the MCP worker: whoever has the variable) SIGKILL itself right there; `POINT#N` waits for
its N-th passage. `FAZT_AGENT_PAUSE_AT` does the same with SIGSTOP, so a test can act while the
process is frozen at that point and let it go on with SIGCONT. Read once at import; without the
variables `crash_point` is one dictionary test. The MCP worker inherits the daemon's environment.
The points are `POINTS`, in the order the loop reaches them.
"""

from __future__ import annotations

import os
import signal

POINTS = {
    "incident.opened": "a beat's incident transitions committed (an incident opened), before its decision",
    "decision.made": "inside the decision's transaction, after `decision.made` is written",
    "halt.row": "inside the decision's transaction, after the halt row is inserted",
    "halt.requested": "inside the decision's transaction, after `halt.requested` is written",
    "decision.committed": "the decision and its halt, action or notification rows committed; nothing sent or applied",
    "notification.sent": "a notification went out, before it is marked sent",
    "halt.answered": "an answer (and for approve, the claim of its execution) committed, before the plan runs",
    "action.started": "an action's row (running) committed, before apply",
    "action.applied": "apply returned, before its outcome is recorded",
}


def _parse(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in (text or "").split(","):
        name, _, nth = item.strip().partition("#")
        if name:
            out[name] = int(nth) if nth.isdigit() and int(nth) > 0 else 1
    return out


_ARMED: dict[str, tuple[int, signal.Signals]] = {
    **{name: (n, signal.SIGSTOP) for name, n in _parse(os.environ.get("FAZT_AGENT_PAUSE_AT")).items()},
    **{name: (n, signal.SIGKILL) for name, n in _parse(os.environ.get("FAZT_AGENT_CRASH_AT")).items()},
}
_passed: dict[str, int] = {}


def armed() -> bool:
    """Whether this process was given a fault point (a crash test drives it)."""
    return bool(_ARMED)


def crash_point(name: str) -> None:
    """Kill (or freeze) this process here when a test armed `name`; nothing otherwise."""
    if not _ARMED or name not in _ARMED:
        return
    _passed[name] = _passed.get(name, 0) + 1
    nth, sig = _ARMED[name]
    if _passed[name] == nth:
        os.kill(os.getpid(), sig)
