"""The answer channels a configuration turns on, and the signed links of the main channel.

Only the configured channels are imported: a daemon without Slack never loads slack_sdk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config
    from ..halt.store import Halt
    from ..notify import Channel, Decorate


def build_channels(config: Config) -> list[Channel]:
    """The outgoing side of each answer channel `config` turns on."""
    found: list[Any] = []
    if config.file.slack.bot_token:
        from .slack import SlackChannel

        found.append(SlackChannel(config))
    if config.file.email.smtp_host and config.file.email.address:
        from .email import EmailChannel

        found.append(EmailChannel(config))
    return found


def links_decorator(config: Config) -> Decorate | None:
    """With `[http] public_url`, the main channel's halt requests and reminders end with a signed
    link per option."""
    http = config.file.http
    if not http.public_url:
        return None
    public_url = http.public_url

    async def decorate(halt: Halt, body: str) -> str:
        if halt.status != "pending":
            return body
        from .links import Signer

        links = Signer.for_data_dir(config.data_dir).links(halt, public_url, lifetime=http.link_expiry)
        lines = [f"  {option}: {url}" for option, url in links.items()]
        return body + "\n\nAnswer from anywhere (each link shows the plan and asks you to confirm):\n" + "\n".join(lines)

    return decorate
