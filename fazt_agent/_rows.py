"""Rows as the Runtime and the CLI's light read path (`cli/_light.py`) both show them, in a module
that imports nothing heavy, so the two print the same."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .clock import iso


def halt_json(h: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """A halt (`halt.store.Halt`, or the light path's row) with its plan as `Plan.to_json` gives it."""
    def ts(value: datetime | None) -> str | None:
        return iso(value) if value else None

    return {"id": h.id, "incident_id": h.incident_id, "rule": h.rule, "title": h.title,
            "body": h.body, "plan": plan, "options": h.options,
            "default_option": h.default_option, "status": h.status, "answer": h.answer,
            "answered_by": h.answered_by, "answered_via": h.answered_via, "note": h.note,
            "created_at": iso(h.created_at),
            "expires_at": iso(h.expires_at), "remind_at": ts(h.remind_at),
            "reminded_at": ts(h.reminded_at), "answered_at": ts(h.answered_at),
            "execution": h.execution, "action_id": h.action_id}
