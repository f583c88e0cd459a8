"""`service.restart`: restart one allowed unit with the configured argv (systemctl by default).

The unit name fills the exact placeholder `{unit}` inside argv elements; nothing else is
substituted and no shell is involved.
"""

from __future__ import annotations

import shlex
from fnmatch import fnmatchcase
from typing import Any

from pydantic import Field

from .. import _proc
from ..errors import ActionError
from .base import Action, ActionArgs, ActionContext, Outcome, Plan, action
from .settings import MAX_TIMEOUT, ServiceSettings

UNIT_PATTERN = r"^[A-Za-z0-9@._:][A-Za-z0-9@._:-]{0,127}$"


class RestartArgs(ActionArgs):
    unit: str = Field(pattern=UNIT_PATTERN)


def check_unit(unit: str, allowed: tuple[str, ...]) -> None:
    """Refuse a unit no `allowed` glob matches.

    Raises:
        ActionError(permanent=True): nothing allows this unit.
    """
    if not allowed:
        raise ActionError("no service units are allowed; add them to [constraints] service_units in a policy file")
    if not any(fnmatchcase(unit, glob) for glob in allowed):
        raise ActionError(f"unit {unit!r} is not allowed (allowed units: {', '.join(allowed)})")


def commands(unit: str, settings: ServiceSettings) -> tuple[list[str], list[str] | None]:
    """The restart and status argv for `unit`."""
    restart = [element.replace("{unit}", unit) for element in settings.restart_command]
    status = settings.status_command
    return restart, None if status is None else [element.replace("{unit}", unit) for element in status]


def _ran(what: str, argv: list[str], done: _proc.Finished, timeout: float) -> tuple[bool, str, dict[str, Any]]:
    details = {"exit_code": done.exit_code, "stdout_tail": done.stdout_tail, "stderr_tail": done.stderr_tail}
    if done.timed_out:
        return False, f"{what} did not finish within {timeout:g}s and was killed ({shlex.join(argv)})", details
    if done.exit_code != 0:
        last = f": {done.last_error_line}" if done.last_error_line else ""
        return False, f"{what} failed with exit code {done.exit_code}{last}", details
    return True, "", details


@action("service.restart")
class ServiceRestart(Action):
    description = "Restart a service unit the policy allows."
    Args = RestartArgs
    timeout = MAX_TIMEOUT  # a ceiling; [service] timeout bounds each command

    def validate(self, args: dict[str, Any], ctx: ActionContext) -> RestartArgs:
        parsed = RestartArgs.model_validate(args)
        check_unit(parsed.unit, ctx.constraints.service_units)
        return parsed

    async def plan(self, args: RestartArgs, ctx: ActionContext) -> Plan:  # type: ignore[override]
        check_unit(args.unit, ctx.constraints.service_units)
        settings = ServiceSettings.model_validate(ctx.settings)
        restart, status = commands(args.unit, settings)
        steps = [shlex.join(restart)] + ([shlex.join(status)] if status else [])
        return Plan(action=self.name, args=args.model_dump(), summary=f"restart {args.unit}", steps=steps,
                    risk="safe", reversible=True,
                    details={"unit": args.unit, "argv": restart, "status_argv": status,
                             "timeout": settings.timeout})

    async def apply(self, plan: Plan, ctx: ActionContext) -> Outcome:
        d = plan.details
        check_unit(d["unit"], ctx.constraints.service_units)
        if commands(d["unit"], ServiceSettings.model_validate(ctx.settings)) != (d["argv"], d["status_argv"]):
            raise ActionError("the [service] settings changed since this plan was made; plan again")
        try:
            done = await _proc.run(d["argv"], d["timeout"])
        except OSError as e:
            return Outcome(ok=False, message=_proc.cannot_start(d["argv"], e))
        ok, problem, details = _ran(f"restart of {d['unit']}", d["argv"], done, d["timeout"])
        if not ok or not d["status_argv"]:
            return Outcome(ok=ok, message=problem or f"restarted {d['unit']}", details=details)
        try:
            status = await _proc.run(d["status_argv"], d["timeout"])
        except OSError as e:
            return Outcome(ok=False, message=f"restarted {d['unit']}, but " + _proc.cannot_start(d["status_argv"], e),
                           details=details)
        ok, problem, details["status"] = _ran("the status command", d["status_argv"], status, d["timeout"])
        message = f"restarted {d['unit']}" + (f", but {problem}" if problem else "")
        return Outcome(ok=ok, message=message, details=details)
