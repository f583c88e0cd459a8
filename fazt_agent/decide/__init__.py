"""Planners: choose actions for an incident. The rules planner (`rules`) is deterministic; the
LLM planner (`llm`) proposes through the same policy gate and falls back to the rules."""
