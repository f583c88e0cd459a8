"""Prompt templates (prompts/*.md) and fencing of untrusted text.

Templates hold `{{name}}` placeholders and nothing else: rendering looks names up in a dict,
in one pass (a value that contains `{{x}}` stays as it is), and never runs code. Each template
may use only its documented names; anything else is refused when the prompts load.

Untrusted text (log lines, file names, app names, probe bodies, earlier messages) enters a
prompt only through `fence()`: inside `<data source="...">` ... `</data>`, with control
characters removed, a closing tag inside the text neutralised, and a length limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..config import Personality, shipped_defaults
from ..errors import ConfigError, Issue

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
TEMPLATES: dict[str, frozenset[str]] = {
    "system": frozenset({"host", "tone"}),
    "decide": frozenset({"trigger", "autonomy", "offer", "max_steps", "incident", "trend", "events", "history",
                         "answers"}),
    "ask": frozenset({"question", "status", "beats", "events"}),
    "summary": frozenset({"status", "beats", "events"}),
}
TONES: dict[str, str] = {
    "helpful": "Write reasons and rationales as short, friendly full sentences for the owner, and say what "
               "they could do next.",
    "terse": "Write reasons and rationales as one short factual line each: no greetings, no filler.",
    "cautious": "Write reasons and rationales with the facts first, then what could go wrong and what you "
                "are not sure about.",
}
_CLOSING = re.compile(r"<\s*/\s*data", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class TemplateError(ConfigError):
    """A prompt template uses a placeholder it may not use (or a value is missing)."""


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: dict[str, str]) -> str:
    """Fill `{{name}}` from `values`.

    Raises:
        TemplateError: the template names a value that is not given.
    """
    missing = placeholders(text) - set(values)
    if missing:
        raise TemplateError([Issue("prompt", "", f"unknown placeholder {{{{{sorted(missing)[0]}}}}} "
                                                   f"(accepted: {', '.join(sorted(values))})")])
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def fence(source: str, text: str, limit: int = 6000) -> str:
    """`text` as labelled, inert data for a prompt."""
    body = _CONTROL.sub("", text.replace("\r\n", "\n"))
    if len(body) > limit:
        body = body[:limit] + f"\n[... {len(body) - limit} more characters cut]"
    body = _CLOSING.sub("</ data", body)
    label = _CONTROL.sub("", source).replace('"', "'").replace("<", "(").replace(">", ")")[:200]
    return f'<data source="{label}">\n{body}\n</data>'


def number(value: object) -> str:
    """A metric for a prompt: integers whole, other numbers to 4 significant digits."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else f"{value:.4g}"
    return str(value)


@dataclass(frozen=True)
class Prompts:
    """The four templates, read from the ops folder's prompts/ (else the shipped ones)."""

    system: str
    decide: str
    ask: str
    summary: str

    @classmethod
    def load(cls, folder: Path) -> Prompts:
        """Read and check every template.

        Raises:
            TemplateError: a template uses a placeholder it may not use.
        """
        texts, issues = {}, []
        for name, allowed in TEMPLATES.items():
            path = folder / f"{name}.md"
            if not path.is_file():
                path = shipped_defaults() / "prompts" / f"{name}.md"
            text = path.read_text(encoding="utf-8")
            for unknown in sorted(placeholders(text) - allowed):
                issues.append(Issue(str(path), f"{{{{{unknown}}}}}", f"unknown placeholder (accepted: "
                                                                      f"{', '.join(sorted(allowed))})"))
            texts[name] = text
        if issues:
            raise TemplateError(issues)
        return cls(**texts)

    def system_prompt(self, host: str, personality: Personality) -> str:
        return render(self.system, {"host": host, "tone": TONES[personality]}).strip()
