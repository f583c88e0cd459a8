"""LLM usage, cost and budgets, counted from the `llm_calls` table.

Every Messages API call (decisions, `pulse ask`, summaries; failed ones too) is one row. The
budget allows a call while the last hour holds fewer than `calls_per_hour` rows and the last
24 hours fewer than `tokens_per_day` tokens (input + cached + output) and `usd_per_day` (for a
model with a known price: a model without one is used with the USD limit skipped, its calls
recorded at cost 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .._sql import CALLS_SINCE, TOKENS_AND_USD_SINCE
from ..clock import Clock, iso, parse_iso
from ..config import LlmPrice, LlmSection
from ..store import Store
from ..units import format_number


@dataclass(frozen=True)
class Usage:
    """Tokens of one or more calls. `input_tokens` excludes the cache reads and writes."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @classmethod
    def from_api(cls, usage: dict[str, Any]) -> Usage:
        return cls(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0),
                   int(usage.get("cache_read_input_tokens") or 0), int(usage.get("cache_creation_input_tokens") or 0))

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                     self.cache_read_tokens + other.cache_read_tokens,
                     self.cache_write_tokens + other.cache_write_tokens)

    def cost(self, price: LlmPrice | None) -> float:
        """Estimated US dollars; 0 for a model without a known price (not counted)."""
        if price is None:
            return 0.0
        return (self.input_tokens * price.input_per_mtok + self.output_tokens * price.output_per_mtok
                + self.cache_read_tokens * price.cache_read_per_mtok
                + self.cache_write_tokens * price.cache_write_per_mtok) / 1_000_000

    def to_json(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_read_tokens": self.cache_read_tokens, "cache_write_tokens": self.cache_write_tokens}


@dataclass(frozen=True)
class Exhausted:
    limit: str
    used: float
    allowed: float

    @property
    def reason(self) -> str:
        what = {"calls_per_hour": "calls in the last hour", "tokens_per_day": "tokens in the last 24 h",
                "usd_per_day": "US dollars in the last 24 h"}[self.limit]
        return (f"LLM budget reached: {format_number(self.used)} {what} (at most {format_number(self.allowed)}, "
                f"[llm.budget] {self.limit})")


class Budget:
    def __init__(self, store: Store, clock: Clock, section: LlmSection):
        self.store = store
        self.clock = clock
        self.section = section

    async def spent(self) -> dict[str, float]:
        """Calls in the last hour; tokens and dollars in the last 24 hours."""
        now = self.clock.now()
        calls = await self.store.scalar(CALLS_SINCE, (iso(now - timedelta(hours=1)),))
        row = await self.store.fetchone(TOKENS_AND_USD_SINCE, (iso(now - timedelta(days=1)),))
        assert row is not None
        return {"calls_per_hour": calls or 0, "tokens_per_day": row[0], "usd_per_day": row[1]}

    async def exhausted(self) -> Exhausted | None:
        """The first limit reached, or None when another call is allowed.

        Without a price for the model (see `LlmSection.price_note`) the USD limit is skipped: its
        calls cost an unknown amount. The call and token limits always apply."""
        spent = await self.spent()
        limits = self.section.budget
        names = ("calls_per_hour", "tokens_per_day") + (("usd_per_day",) if self.section.price is not None else ())
        for name in names:
            allowed = getattr(limits, name)
            if spent[name] >= allowed:
                return Exhausted(name, round(spent[name], 4), allowed)
        return None

    async def record(self, purpose: str, usage: Usage, latency_ms: float, error: str | None = None) -> float:
        """Store one call; returns its estimated cost."""
        cost = usage.cost(self.section.price)
        await self.store.execute(
            "INSERT INTO llm_calls(ts, purpose, model, input_tokens, output_tokens, cached_tokens, cost_usd, "
            "latency_ms, ok, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (iso(self.clock.now()), purpose, self.section.model, usage.input_tokens + usage.cache_write_tokens,
             usage.output_tokens, usage.cache_read_tokens, cost, latency_ms, int(error is None), error))
        return cost

    async def last_call(self, purpose: str) -> datetime | None:
        ts = await self.store.scalar("SELECT MAX(ts) FROM llm_calls WHERE purpose = ?", (purpose,))
        return parse_iso(ts) if ts else None
