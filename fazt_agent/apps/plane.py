"""The daemon's side of the apps plane: its own uvicorn listener, started only when wanted.

`ensure` starts it when `[apps] enabled` or once an app exists (checked every housekeeping tick
by one `stat`), so an idle daemon without apps never imports this package's server nor opens
apps.db. With `[apps] tls_listen`, a second socket serves the same app over TLS (`tls.py`).
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
        self.tls: Any = None   # tls.TlsListener, with [apps] tls_listen
        self.failed: str | None = None

    async def ensure(self, rt: Any) -> None:
        """Start the listeners if they should run and do not (`rt`: the daemon's Runtime); a bind
        failure is logged once, and the other listener still starts."""
        from .store import has_apps

        config = rt.config
        if self.plane is not None:
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
            log.info("apps plane on http://%s (apps at NAME.%s)", section.listen, section.domain)
        except FaztAgentError as e:
            self.failed = str(e)
            log.error("apps plane not started: %s", e)
        if section.tls_listen:
            await self._start_tls(rt)

    async def _start_tls(self, rt: Any) -> None:
        from ..errors import FaztAgentError
        from .tls import TlsListener, describe

        section = rt.config.file.apps
        self.tls = TlsListener(self.plane, rt)
        try:
            await self.tls.start(section.tls_host, section.tls_port, "[apps] tls_listen")
        except FaztAgentError as e:
            self.tls = None
            log.error("apps plane TLS not started: %s", e)
            return
        log.info("apps plane on https://%s, certificates by SNI: %s", section.tls_listen,
                 describe(rt.definitions.kernel.certificates))

    async def stop(self) -> None:
        if self.tls is not None:
            await self.tls.stop()
            self.tls = None
        if self.server is not None:
            from ..web.app import stop

            await stop(self.server, self.task)
            self.server = None
        if self.plane is not None:
            await self.plane.aclose()   # its JS workers too
