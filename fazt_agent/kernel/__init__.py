"""Kernel actions (plan + apply). Importing this package registers every action in `ACTIONS`."""

from . import apps, cleanup, command, notify, service, ssl  # noqa: F401  (registers actions)
from .base import ACTIONS, Action, ActionArgs, ActionContext, Constraints, Outcome, Plan, Risk

__all__ = ["ACTIONS", "Action", "ActionArgs", "ActionContext", "Constraints", "Outcome", "Plan", "Risk"]
