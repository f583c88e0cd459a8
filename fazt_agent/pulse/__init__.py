"""Pulse: health checks and beats.

The check kinds are imported here explicitly (a registry, not discovery): importing
`fazt_agent.pulse` registers every kind in `CHECKS`.
"""

from . import cert_file, command, dir_size, disk, file_age, http, process, system, tls  # noqa: F401  (registers kinds)
from .base import CHECKS, Check, CheckConfig, CheckContext, CheckResult, Status, worst

__all__ = ["CHECKS", "Check", "CheckConfig", "CheckContext", "CheckResult", "Status", "worst"]
