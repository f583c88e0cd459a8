"""`notify`: tell the owner something, through the configured notifier."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Action, ActionArgs, ActionContext, Outcome, Plan, action


class NotifyArgs(ActionArgs):
    message: str = Field(min_length=1, max_length=2000)
    title: str | None = Field(None, max_length=200)
    severity: Literal["info", "warning", "critical"] = "info"


@action("notify")
class Notify(Action):
    description = "Send the owner a message."
    Args = NotifyArgs
    timeout = 60.0

    async def plan(self, args: NotifyArgs, ctx: ActionContext) -> Plan:  # type: ignore[override]
        first = " ".join(args.message.split())[:80]
        return Plan(action=self.name, args=args.model_dump(), summary=f"tell the owner: {first}",
                    steps=[f"notify ({args.severity}): {args.title or 'fazt-agent'}"],
                    risk="safe", reversible=True,  # nothing on the server changes
                    details={"title": args.title, "message": args.message, "severity": args.severity})

    async def apply(self, plan: Plan, ctx: ActionContext) -> Outcome:
        if ctx.notifier is None:
            return Outcome(ok=False, message="no notifier")
        d = plan.details
        await ctx.notifier.notify(d["title"] or "fazt-agent", d["message"], severity=d["severity"])
        return Outcome(ok=True, message=f"told the owner ({d['severity']})")
