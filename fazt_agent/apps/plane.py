"""The daemon's side of the apps plane: its own uvicorn listener, started only when wanted.

`ensure` starts it when `[apps] enabled` or once an app exists (checked every housekeeping tick
by one `stat`), so an idle daemon without apps never imports this package's server nor opens
apps.db.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class AppsListener:
    def __init__(self) -> None:
        self.server: Any = None
        self.task: Any = None
        self.plane: Any = None
        self.failed: str | None = None

    async def ensure(self, config: Any) -> None:
        """Start the listener if it should run and does not; a bind failure is logged once."""
        from .store import has_apps

        if self.server is not None or self.failed is not None:
            return
        section = config.file.apps
        if not section.enabled and not has_apps(config.data_dir):
            return
        from ..errors import FaztAgentError
        from ..web.app import start
        from .server import plane_for

        self.plane = plane_for(config)
        self.plane.store.remember_settings(section.model_dump())
        try:
            self.server, self.task = await start(self.plane, section.host, section.port, "[apps] listen")
        except FaztAgentError as e:
            self.failed = str(e)
            log.error("apps plane not started: %s", e)
            return
        log.info("apps plane on http://%s (apps at NAME.%s)", section.listen, section.domain)

    async def stop(self) -> None:
        if self.server is not None:
            from ..web.app import stop

            await stop(self.server, self.task)
            self.server = None
        if self.plane is not None:
            await self.plane.aclose()   # its JS workers too
