"""`command`: run a Nagios / Monitoring-Plugins style plugin and take its verdict.

Exit 0/1/2/3 is ok/warning/critical/unknown; any other exit is unknown. The message is the first
output line up to `|`. Perfdata (`'label'=value[UOM];warn;crit;min;max`, after the `|` of the
first line and after the first `|` of the long output) becomes metrics named after the label in
snake_case, with the value converted to a base unit named by a suffix:
s/ms/us -> `<label>_seconds`, B/KB/MB/GB/TB -> `<label>_bytes` (binary multiples, as
Monitoring-Plugins means them), % -> `<label>_percent`, c -> `<label>_total`, none -> `<label>`.
Items that cannot be read (another unit, `U`, a bad number) are listed in details under
`perfdata_ignored`, never an error.

The argv runs without a shell, in its own process group (`_proc.output`); the group is killed
and the plugin reaped when the check is cancelled (the runner's timeout). Output goes to files,
not pipes, so a plugin that leaves a background child holding stdout is not waited for.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Literal

from pydantic import Field, field_validator

from .. import _proc
from ..errors import CheckError
from .base import Check, CheckConfig, CheckContext, CheckResult, Status, check

_EXIT_STATUS: dict[int, Status] = {0: "ok", 1: "warning", 2: "critical", 3: "unknown"}
_ITEM = re.compile(r"('(?:[^']|'')+'|[^\s'=]+)=(\S*)")
_JUNK = re.compile(r"\S+")
_GAP = re.compile(r"\s*")
_VALUE = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)([a-zA-Z%]*)")
_UNITS = {"": ("", 1.0), "%": ("_percent", 1.0), "c": ("_total", 1.0),
          "s": ("_seconds", 1.0), "ms": ("_seconds", 1e-3), "us": ("_seconds", 1e-6)}
_BYTE_UNITS = {"B": 1.0, "KB": 1024.0, "MB": 1024.0**2, "GB": 1024.0**3, "TB": 1024.0**4}
_KEEP = 2000  # characters of long output / stderr kept in details


def metric_name(label: str) -> str:
    """A perfdata label in snake_case ('' when nothing usable is left)."""
    name = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    if not name and label.startswith("/"):
        return "root"  # check_disk labels the root filesystem "/"
    return name


def parse_perfdata(text: str) -> tuple[dict[str, float], list[str]]:
    """Metrics from a perfdata string, and the items that could not be read."""
    metrics: dict[str, float] = {}
    ignored: list[str] = []
    pos = _GAP.match(text).end()  # type: ignore[union-attr]
    while pos < len(text):
        item = _ITEM.match(text, pos)
        if item is None:
            junk = _JUNK.match(text, pos)
            ignored.append(junk.group())  # type: ignore[union-attr]
            pos = junk.end()  # type: ignore[union-attr]
        else:
            pos = item.end()
            label, fields = item.groups()
            if label.startswith("'"):
                label = label[1:-1].replace("''", "'")
            metric = _metric(label, fields.split(";")[0])
            if metric is None:
                ignored.append(item.group())
            else:
                metrics[metric[0]] = metric[1]
        pos = _GAP.match(text, pos).end()  # type: ignore[union-attr]
    return metrics, ignored


def _metric(label: str, raw: str) -> tuple[str, float] | None:
    value = _VALUE.fullmatch(raw)
    name = metric_name(label)
    if value is None or not name:
        return None
    number, uom = value.groups()
    if uom.upper() in _BYTE_UNITS:
        suffix, factor = "_bytes", _BYTE_UNITS[uom.upper()]
    elif uom in _UNITS:
        suffix, factor = _UNITS[uom]
    else:
        return None
    converted = float(number) * factor
    if not math.isfinite(converted):
        return None
    return (name if name.endswith(suffix) else name + suffix), converted


def split_output(text: str) -> tuple[str, str, str]:
    """Message, long output and perfdata of plugin output, by the Nagios plugin API."""
    first, _, rest = text.partition("\n")
    message, _, perfdata = first.partition("|")
    long_output, _, more_perfdata = rest.partition("|")
    return message.strip(), long_output.strip(), f"{perfdata} {more_perfdata}".strip()


class CommandConfig(CheckConfig):
    kind: Literal["command"]
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = {}  # added to the agent's environment
    cwd: str | None = None
    target: str | None = None  # default: the check name

    @field_validator("command", mode="before")
    @classmethod
    def _argv(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("expected an argv list like ['/usr/lib/nagios/plugins/check_load', '-w', '5'], "
                             f"not a shell string: {value!r}")
        return value


@check("command")
class CommandCheck(Check):
    Config = CommandConfig
    config: CommandConfig

    @property
    def target(self) -> str:
        return self.config.target or self.name

    async def collect(self, ctx: CheckContext) -> list[CheckResult]:
        c = self.config
        try:
            code, out, err = await _proc.output(c.command, cwd=c.cwd, env={**os.environ, **c.env} if c.env else None)
        except OSError as e:
            where = f": {e.filename!r}" if e.filename and e.filename != c.command[0] else ""
            raise CheckError(f"cannot run {c.command[0]!r}: {e.strerror}{where}") from e
        return [self._verdict(code, out, err)]

    def _verdict(self, code: int, out: str, err: str) -> CheckResult:
        message, long_output, perfdata = split_output(out if out.strip() else err)
        metrics, ignored = parse_perfdata(perfdata)
        status = _EXIT_STATUS.get(code, "unknown")
        if code < 0:
            message = f"killed by signal {-code}" + (f": {message}" if message else "")
        elif code not in _EXIT_STATUS:
            message = f"exit code {code} is not a plugin status" + (f": {message}" if message else "")
        elif not message:
            message = f"exit code {code}, no output"
        details: dict[str, Any] = {"exit_code": code}
        if long_output:
            details["long_output"] = long_output[:_KEEP]
        if err.strip() and out.strip():
            details["stderr"] = err.strip()[:_KEEP]
        if ignored:
            details["perfdata_ignored"] = ignored[:20]
        return self.result(self.config.target or self.name, status, message[:300], metrics, **details)
