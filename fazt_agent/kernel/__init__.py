"""Kernel actions (plan + apply).

The actions are listed here by name with the module that registers each (a registry, not
discovery), and a module is imported when one of its actions is first looked up: `ACTIONS[name]`
imports that action's module, so a command that approves a cleanup imports (and builds the
argument model of) `cleanup` alone, and one that only reads the store imports none. The names
(`set(ACTIONS)`, `name in ACTIONS`) import nothing; `ACTIONS.values()` and `.items()` import them all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module

from . import base
from .base import Action, ActionArgs, ActionContext, Constraints, Outcome, Plan, Risk

# action name -> the module of this package that registers it with `@action(name)`
MODULES = {"deploy": "apps", "app.rollback": "apps", "app.delete": "apps", "cleanup": "cleanup",
           "command": "command", "notify": "notify", "service.restart": "service", "ssl.renew": "ssl",
           "ssl.provision": "ssl"}


class _Actions(Mapping[str, type[Action]]):
    """Every kernel action by name; its module is imported (and registers it) on first lookup."""

    def __getitem__(self, name: str) -> type[Action]:
        if name not in MODULES:
            raise KeyError(name)
        if name not in base.ACTIONS:
            import_module(f"{__name__}.{MODULES[name]}")
        return base.ACTIONS[name]

    def __contains__(self, name: object) -> bool:
        return name in MODULES

    def __iter__(self) -> Iterator[str]:
        return iter(MODULES)

    def __len__(self) -> int:
        return len(MODULES)


ACTIONS: Mapping[str, type[Action]] = _Actions()

__all__ = ["ACTIONS", "Action", "ActionArgs", "ActionContext", "Constraints", "Outcome", "Plan", "Risk"]
