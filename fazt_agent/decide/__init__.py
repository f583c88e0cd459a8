"""Planners: choose actions for an incident. The rules planner is deterministic; the LLM
planner (later) proposes through the same gate."""
