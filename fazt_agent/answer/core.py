"""The one answer path of every channel: who may answer, what was already processed, and the
refusals the audit trail keeps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from ..clock import iso
from ..halt.store import HaltError
from .links import BROADCAST_OWNER

if TYPE_CHECKING:
    from ..config import Config
    from ..executor import Executor


class Answers:
    """Answer halts for the people `[[owners]]` names, through `Executor.answer` (exactly once)."""

    def __init__(self, executor: Executor, config: Config):
        self.executor = executor
        self.config = config
        self.store = executor.rt.store

    def owner_of(self, channel: str, identity: str) -> str | None:
        """The owner `identity` is on `channel` (a Slack user ID, an email address, the owner a link
        was signed for, the token of a web session), or None: not an owner."""
        owners = self.config.file.owners
        if channel == "slack":
            return next((o.name for o in owners if o.slack and o.slack == identity), None)
        if channel == "email":
            return next((o.name for o in owners if o.email and o.email.lower() == identity.lower()), None)
        if channel == "link":
            if identity == BROADCAST_OWNER:
                return identity
            return next((o.name for o in owners if o.name == identity), None)
        if channel == "web":   # the session's token, checked by the web layer (operate scope)
            return identity
        return None

    async def seen(self, channel: str, key: str) -> bool:
        """Whether `key` (a Slack envelope, an email's Message-ID, a link) was processed before;
        records it if not. At-least-once deliveries are answered at most once, across restarts."""
        changed = await self.store.execute(
            "INSERT OR IGNORE INTO inbound(channel, key, seen_at) VALUES (?, ?, ?)",
            (channel, key[:512], iso(self.executor.clock.now())))
        return changed == 0

    async def refuse(self, halt_id: int | None, option: str, channel: str, identity: str, reason: str) -> NoReturn:
        """Record a refused answer (`halt.answer_refused`) and raise HaltError(reason)."""
        halt = await self.executor.halts.get(halt_id) if halt_id is not None else None
        await self.executor.halts.refuse(halt_id, halt.incident_id if halt else None, option, identity, reason,
                                         channel)

    async def answer(self, halt_id: int, option: str, *, channel: str, identity: str,
                     note: str | None = None) -> dict[str, Any]:
        """Answer as the owner `identity` is on `channel`; on approve, the plan runs here, once.

        Raises:
            HaltError: not an owner, or the halt refused the answer (already answered by whom, via
                what, when; expired; not an option) — recorded either way.
        """
        owner = self.owner_of(channel, identity)
        if owner is None:
            await self.refuse(halt_id, option, channel, f"{channel}:{identity}",
                              f"{identity[:128]} is not an owner on {channel} (see [[owners]] in config.toml)")
        assert owner is not None
        return await self.executor.answer(halt_id, option, by=owner, note=note, channel=channel)


__all__ = ["Answers", "HaltError"]
