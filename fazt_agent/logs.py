"""Structured logs to stderr (text or JSON lines), with secrets redacted from every record."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Iterable

_SECRETS: set[str] = set()
_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def add_secrets(values: Iterable[str]) -> None:
    """Values that must never appear in a log line (tokens, keys, notification URLs)."""
    _SECRETS.update(v for v in values if v and len(v) >= 4)


def redact(text: str) -> str:
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool):
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        extra = {k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS and not k.startswith("_")}
        ts = datetime.fromtimestamp(record.created, timezone.utc)
        if self.as_json:
            doc = {"ts": ts.isoformat(timespec="milliseconds"), "level": record.levelname.lower(),
                   "logger": record.name, "msg": message, **extra}
            return redact(json.dumps(doc, default=str))
        fields = " ".join(f"{k}={v}" for k, v in extra.items())
        line = f"{ts:%Y-%m-%d %H:%M:%S} {record.levelname.lower():7} {record.name}: {message}"
        return redact(f"{line} {fields}" if fields else line)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Send fazt-agent's logs (and its libraries' warnings) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("fazt_agent").setLevel(level.upper())
    for noisy in ("uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
