"""Answering halts from where the owner is (issue 12): one answer path, many channels.

Every channel — the CLI (through the running daemon's local socket, `local.py`, or in its own
process), MCP, signed links and the approvals page (`web/`), Slack (`slack.py`), email replies
(`email.py`) — authenticates the person answering, maps them to an owner of
`[[owners]]` in config.toml (`core.Answers`), and answers through `Executor.answer`, the one
exactly-once path (`HaltStore.answer`). Each answer records its channel and owner; each refused
one (forged, replayed, stale, not an owner, already answered, unknown option) is a
`halt.answer_refused` event with the reason. Closing a halt notifies every channel
(`Executor.closed`), so a Slack message loses its buttons and an email thread hears who answered.
"""
