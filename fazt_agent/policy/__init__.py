"""Policies: the owner's rules (TOML) and the pure gate that judges every plan."""

from .evaluate import History, Judgement, ceiling, judge
from .model import Policy, Rule, load_policy

__all__ = ["History", "Judgement", "Policy", "Rule", "ceiling", "judge", "load_policy"]
