"""`command`: run an owner-declared command (`[[commands]]` in kernel/*.toml).

The program and every fixed argument come from the declaration. Callers (rules, the LLM) only
give values for declared arguments; each is checked against its schema and fills `{name}`
placeholders inside argv elements, so one value always stays one argv entry. No shell.
"""

from __future__ import annotations

import shlex
from typing import Any

from .. import _proc
from ..errors import ActionError
from .base import Action, ActionArgs, ActionContext, Outcome, Plan, action
from .settings import MAX_TIMEOUT, PLACEHOLDER, CommandSpec


class CommandArgs(ActionArgs):
    name: str
    args: dict[str, Any] = {}


def declared(ctx: ActionContext) -> dict[str, CommandSpec]:
    """The commands of `ctx.settings` (CommandSpec objects or their dicts)."""
    return {name: CommandSpec.model_validate(spec) for name, spec in ctx.settings.get("commands", {}).items()}


def resolve(name: str, values: dict[str, Any], commands: dict[str, CommandSpec]) -> tuple[CommandSpec, list[str]]:
    """The declaration of `name` and its argv with `values` filled in.

    Raises:
        ActionError(permanent=True): unknown command, unknown/missing argument, or a refused value.
    """
    if name not in commands:
        if not commands:
            raise ActionError(f"unknown command {name!r}: no commands are declared; add [[commands]] "
                              "to a kernel/*.toml file")
        raise ActionError(f"unknown command {name!r} (declared: {', '.join(sorted(commands))})")
    spec = commands[name]
    unknown = sorted(values.keys() - spec.args.keys())
    if unknown:
        raise ActionError(f"command {name!r} has no argument {unknown[0]!r} "
                          f"(its arguments: {', '.join(spec.args) or 'none'})")
    filled: dict[str, Any] = {}
    for arg, schema in spec.args.items():
        if arg in values:
            try:
                filled[arg] = schema.check(f"argument {arg!r}", values[arg])
            except ValueError as e:
                raise ActionError(f"command {name!r}: {e}") from None
        elif schema.default is None:
            raise ActionError(f"command {name!r} needs argument {arg!r}")
        else:
            filled[arg] = schema.default
    argv = [PLACEHOLDER.sub(lambda m: _text(filled[m.group(1)]), element) for element in spec.argv]
    return spec, argv


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@action("command")
class Command(Action):
    description = "Run a command the owner declared in kernel/*.toml, with checked arguments."
    Args = CommandArgs
    timeout = MAX_TIMEOUT  # a ceiling; each declaration has its own timeout

    def validate(self, args: dict[str, Any], ctx: ActionContext) -> CommandArgs:
        parsed = CommandArgs.model_validate(args)
        resolve(parsed.name, parsed.args, declared(ctx))
        return parsed

    async def plan(self, args: CommandArgs, ctx: ActionContext) -> Plan:  # type: ignore[override]
        spec, argv = resolve(args.name, args.args, declared(ctx))
        return Plan(action=self.name, args=args.model_dump(), summary=f"run {spec.name}: {shlex.join(argv)}",
                    steps=[shlex.join(argv)], risk=spec.risk, reversible=spec.reversible, deletes=spec.deletes,
                    details={"command": spec.name, "argv": argv, "timeout": spec.timeout})

    async def apply(self, plan: Plan, ctx: ActionContext) -> Outcome:
        d = plan.details
        _, argv = resolve(plan.args["name"], plan.args["args"], declared(ctx))
        if argv != d["argv"]:
            raise ActionError(f"the declaration of command {d['command']!r} changed since this plan was made; "
                              "plan again")
        try:
            done = await _proc.run(argv, d["timeout"])
        except OSError as e:
            return Outcome(ok=False, message=_proc.cannot_start(argv, e))
        details = {"exit_code": done.exit_code, "stdout_tail": done.stdout_tail, "stderr_tail": done.stderr_tail}
        if done.timed_out:
            return Outcome(ok=False, message=f"{d['command']} did not finish within {d['timeout']:g}s and was killed",
                           details=details)
        if done.exit_code != 0:
            last = f": {done.last_error_line}" if done.last_error_line else ""
            return Outcome(ok=False, message=f"{d['command']} failed with exit code {done.exit_code}{last}",
                           details=details)
        return Outcome(ok=True, message=f"{d['command']} succeeded", details=details)
