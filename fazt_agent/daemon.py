"""The daemon's lifecycle: lock, store, timetable, control plane, signals, sd_notify, shutdown.

`Daemon.run()` is the async entry point (tests drive it directly or through `fazt-agent run`).
SIGTERM/SIGINT set a stop event; the daemon then stops scheduling, lets an in-flight beat finish
within the drain timeout (or cancels it and records it as interrupted), stops the listener, and
returns 0 — all within 5 seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from datetime import datetime
from typing import Any, Awaitable, Callable, Coroutine

from . import __version__
from ._lock import DataDirLock
from ._sdnotify import Notifier
from ._ticker import Ticker
from .clock import iso
from .config import Config, read_autonomy
from .event_types import AgentAlert, AgentStarted, AgentStopped, PulseBeatInterrupted
from .pulse.runner import BeatResult
from .runtime import Runtime

log = logging.getLogger(__name__)
DRAIN_TIMEOUT = 3.0
HOUSEKEEPING_INTERVAL = 2.0
BeatHook = Callable[[BeatResult], Awaitable[None]]


class Daemon:
    """The daemon on a validated `config`. `_start.py` may hand it what it opened before validating:
    the data dir's `lock`, held; the control plane's `front` door, listening; the `observed` inputs of
    the load (`_snapshot`: the stamp the CLI compares, the snapshot written for the next start); the
    monotonic time the process `started`."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None, lock: DataDirLock | None = None,
                 front: Any = None, observed: Any = None, started: float | None = None):
        self.config = config
        self.notifier = notifier or Notifier()
        self.lock = lock or DataDirLock(config.data_dir)
        self._warm_front = front   # web.front.Front, opened before this daemon existed; adopted by _start_http
        self._observed = observed
        self.stop_event = asyncio.Event()
        self.after_beat: list[BeatHook] = []
        self.runtime: Runtime | None = None
        self.engine: Any = None
        self._mcp: Any = None   # the /mcp endpoint (fazt_agent.mcp.worker.McpWorker)
        self._apps: Any = None  # the apps plane's listener (fazt_agent.apps.plane.AppsListener)
        self._dashboard: Any = None   # the dashboard's pages (fazt_agent.web.dashboard.Dashboard)
        self._inflight: dict[asyncio.Task[None], tuple[str, datetime]] = {}
        self._started = time.monotonic() if started is None else started
        self._last_beat: BeatResult | None = None
        self._last_beat_mono: float | None = None
        self._stop_reason = "stopped"
        self._file_autonomy: str | None = None      # the config file's [agent] autonomy, last read well
        self._autonomy_problem: str | None = None   # why it could not be read at the last look

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the process exit code.

        Raises:
            LockError: another daemon runs on the same data dir.
            ConfigError, StoreError: the configuration or database cannot be used.
        """
        if not self.lock.held:
            self.lock.acquire()
        try:
            self.runtime = await Runtime.open(self.config)
            try:
                return await self._serve(self.runtime)
            finally:
                await self.runtime.close()
        finally:
            if self._warm_front is not None:   # never adopted: the start failed before the control plane
                await self._warm_front.stop()
            self.lock.release()
            self.notifier.close()

    async def _serve(self, rt: Runtime) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, signal.Signals(sig).name)
        await rt.events.emit("agent.started", AgentStarted(
            version=__version__, pid=os.getpid(), config=str(rt.config.source) if rt.config.source else None,
            data_dir=str(rt.config.data_dir), autonomy=await rt.autonomy(), checks=len(rt.pulse.checks)))
        from .engine import Engine

        self.engine = Engine(rt, spawn=self.spawn)
        self.after_beat.insert(0, self.engine.on_beat)
        from .answer.core import Answers

        self.answers = Answers(self.engine.executor, rt.config)   # every channel's way to answer a halt
        from ._snapshot import observe
        from .answer.local import LocalAnswers

        if self._observed is None:   # the files as this daemon read them (the CLI compares)
            self._observed = observe(rt.config.source)
        observed = self._observed
        self._local = LocalAnswers(self.engine.executor, observed.stamp if observed else None, self.spawn)
        await self._local.start(rt.config.data_dir)   # `fazt-agent approve` answers through it
        self._email: Any = None
        if rt.config.file.email.imap_host:   # email replies, read over IMAP IDLE in the background
            from .answer.email import EmailListener

            self._email = EmailListener()
            await self._email.start(self.answers, rt.config)
        self._slack: Any = None
        if rt.config.file.slack.app_token or rt.config.file.slack.signing_secret:   # Socket Mode, /slack/interactivity
            from .answer.slack import SlackListener

            self._slack = SlackListener()
            await self._slack.start(self.answers, rt.config)
        for warning in rt.config.warnings:
            log.warning("%s", warning)
        await self._start_following_autonomy(rt)
        await self.engine.reconcile()
        front = await self._start_http(rt)
        from .apps.plane import AppsListener  # tiny; the apps plane itself is imported only when wanted

        self._apps = AppsListener()
        await self._apps.ensure(rt)
        ticker = Ticker()
        ticker.every(rt.config.file.pulse.interval, self._beat_job, name="beat")
        ticker.every(3600, self._prune_job, name="retention")
        ticker.every(HOUSEKEEPING_INTERVAL, self._housekeeping_job, name="housekeeping", first=HOUSEKEEPING_INTERVAL)
        watchdog = asyncio.create_task(self._watchdog()) if self.notifier.watchdog_interval else None
        self.notifier.send("READY=1", f"STATUS=running, {len(rt.pulse.checks)} checks every "
                                      f"{rt.config.file.pulse.interval:g}s")
        log.debug("notify urls: %s", rt.config.file.notify.urls or "none (notifications go to this log)")
        log.info("fazt-agent %s started: %d checks, data dir %s", __version__, len(rt.pulse.checks),
                 rt.config.data_dir)
        self._remember(rt)
        await self.stop_event.wait()

        self.notifier.send("STOPPING=1", f"STATUS=stopping ({self._stop_reason})")
        log.info("stopping (%s)", self._stop_reason)
        ticker.stop()
        await self._local.stop()
        if self._email is not None:
            await self._email.stop()
        if self._slack is not None:
            await self._slack.stop()
        interrupted = await self._drain(rt)
        if watchdog:
            watchdog.cancel()
        if front is not None:
            if self._mcp is not None:   # /mcp was asked for
                await self._mcp.aclose()  # stops the MCP worker, so open streams do not hold the server
            if self._dashboard is not None:   # the control plane was built (a request other than /healthz came)
                self._dashboard.close()   # ends the dashboard's live streams, for the same reason
            await front.stop()
        await self._apps.stop()
        await rt.events.emit("agent.stopped", AgentStopped(
            reason=self._stop_reason, uptime_s=round(time.monotonic() - self._started, 3), interrupted=interrupted))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        return 0

    def _remember(self, rt: Runtime) -> None:
        """The snapshot of this validated load (`_snapshot`), so that the next start and the CLI's reads
        need not validate again while nothing changes."""
        from . import _snapshot

        if self._observed is not None:
            try:
                _snapshot.remember(self._observed, rt.config.source, rt)
            except Exception:   # only a cache: the next start validates first
                log.warning("could not write the snapshot of the validated configuration", exc_info=True)

    def stop(self, reason: str = "stopped") -> None:
        self._stop_reason = reason
        self.stop_event.set()

    def spawn(self, kind: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task of ours, tracked so that stopping drains or records it.

        Timetable jobs only spawn: stopping the timetable never cancels work half-done.
        """
        task = asyncio.get_running_loop().create_task(coro, name=kind)
        assert self.runtime is not None
        self._inflight[task] = (kind, self.runtime.clock.now())
        task.add_done_callback(lambda t: self._inflight.pop(t, None))

    async def _beat_job(self) -> None:
        """The beat's slot in the timetable: one beat at a time."""
        if any(kind == "beat" for kind, _ in self._inflight.values()):
            log.warning("beat skipped: the previous beat is still running")
            return
        if not self.stop_event.is_set():
            assert self.runtime is not None
            self.spawn("beat", self._beat(self.runtime))

    async def _beat(self, rt: Runtime) -> None:
        try:
            beat = await rt.pulse.beat()
            self._last_beat, self._last_beat_mono = beat, time.monotonic()
            bad = sum(1 for r in beat.results if r.status != "ok")
            log.debug("beat %s: %s in %.0f ms, %d not ok", beat.id, beat.status, beat.duration_ms, bad)
            self.notifier.send(f"STATUS=last beat {beat.ts:%H:%M:%S}: {beat.status}, "
                               f"{len(beat.results)} results, {bad} not ok")
            for hook in self.after_beat:
                await hook(beat)
        except asyncio.CancelledError:
            raise
        except Exception:  # supervisor boundary: a failed beat is logged, the next one runs
            log.exception("beat failed")

    async def _housekeeping_job(self) -> None:
        """Every few seconds: reload an edited policy, expire/remind halts, retry notifications."""
        if not any(kind == "housekeeping" for kind, _ in self._inflight.values()) and not self.stop_event.is_set():
            self.spawn("housekeeping", self._housekeeping())

    async def _housekeeping(self) -> None:
        assert self.engine is not None
        try:
            await self.engine.reload_policy()
            await self._follow_config_autonomy(self.engine.rt)
            await self.engine.sweep()
            if self._apps is not None:
                await self._apps.ensure(self.engine.rt)  # the first deploy starts the apps plane
            if self._mcp is not None:
                await self._mcp.reap()
        except Exception:  # supervisor boundary
            log.exception("housekeeping failed")

    async def _start_following_autonomy(self, rt: Runtime) -> None:
        """Note the config file's autonomy; an override set before the file was last edited (while
        no daemon ran) is cleared and recorded, as if the daemon had seen the edit."""
        state = await rt.autonomy_state()
        self._file_autonomy = state.config
        override = await rt.autonomy_override()
        if override is not None and override.config is not None and override.config != state.config:
            await self.engine.follow_config_autonomy(override.config, state.config)

    async def _follow_config_autonomy(self, rt: Runtime) -> None:
        """An edit of the config file's `[agent] autonomy` takes effect (only that key is re-read): it
        clears a run-time override and open incidents are decided again. A broken edit is recorded
        once and the level in force stays."""
        if rt.config.source is None:
            return
        read = read_autonomy(rt.config.source)
        if read.problem is not None:
            if read.problem != self._autonomy_problem:
                self._autonomy_problem = read.problem
                level = await rt.autonomy()
                log.warning("config edit not applied, autonomy stays %s: %s", level, read.problem)
                await rt.events.emit("agent.alert", AgentAlert(
                    message=f"the config file's [agent] autonomy cannot be read; autonomy stays {level}: "
                            f"{read.problem}", file=str(rt.config.source)), source="config")
            return
        self._autonomy_problem = None
        if read.level is None or read.level == self._file_autonomy:
            return
        before, self._file_autonomy = self._file_autonomy, read.level
        if await self.engine.follow_config_autonomy(before, read.level):
            log.info("autonomy %s: [agent] autonomy edited in %s", await rt.autonomy(), rt.config.source)

    async def _prune_job(self) -> None:
        self.spawn("prune", self._prune())

    async def _prune(self) -> None:
        assert self.runtime is not None
        try:
            events, beats = await self.runtime.prune()
            if events or beats:
                log.info("retention: removed %d events and %d beats", events, beats)
        except Exception:
            log.exception("retention failed")

    async def _drain(self, rt: Runtime) -> list[str]:
        """Let in-flight work finish within DRAIN_TIMEOUT; cancel and record the rest."""
        if not self._inflight:
            return []
        started = dict(self._inflight)
        _, pending = await asyncio.wait(list(started), timeout=DRAIN_TIMEOUT)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.5)
        interrupted = []
        for task in pending:
            kind, at = started[task]
            if kind == "beat":
                await rt.events.emit("pulse.beat_interrupted", PulseBeatInterrupted(
                    started_at=iso(at), reason=f"daemon stopping ({self._stop_reason})"), source="pulse")
            interrupted.append(f"{kind} started {iso(at)}")
        return interrupted

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        assert interval is not None
        while True:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while beats keep coming: the last one is younger than 3 intervals."""
        assert self.runtime is not None
        interval = self.runtime.config.file.pulse.interval
        slack = 3 * interval + self.runtime.config.file.pulse.timeout
        now = time.monotonic()
        details: dict[str, Any] = {"version": __version__, "uptime_s": round(now - self._started, 1), "ready": True,
                                   "mcp_worker_pid": self._mcp.pid if self._mcp is not None else None}
        if self._last_beat is None or self._last_beat_mono is None:
            details["last_beat"] = None
            return now - self._started < slack, details
        age = now - self._last_beat_mono
        details.update(last_beat=iso(self._last_beat.ts), last_beat_status=self._last_beat.status,
                       last_beat_age_s=round(age, 1))
        return age < slack, details

    async def _start_http(self, rt: Runtime) -> Any:
        """The control plane: /healthz, /metrics, /webhooks/alertmanager, signed links (/a/...) and
        /approvals, the dashboard (/ and its pages), and /mcp (a worker process started at its first request).

        The front door (`web/front.py`, bare asyncio) answers /healthz itself and serves /mcp with the
        MCP worker's bridge (`_mcp_endpoint`); uvicorn and the rest (`_control_plane`: starlette,
        metrics, the webhook, approvals, the dashboard, ~5 MiB and ~120 ms) start at the first request
        for anything else, so a daemon that is only probed for health, or used through MCP, never
        holds them."""
        http = rt.config.file.http
        front, self._warm_front = self._warm_front, None
        if front is not None and (not http.enabled or front.address != (http.host, http.port)):
            await front.stop()   # the file was edited since the snapshot its door was opened from
            front = None
        if not http.enabled:
            return None
        if front is None:
            from .web.front import Front

            front = Front(self.health)
            await front.start(http.host, http.port, "[http] listen")
        front.adopt(self.health, lambda: self._control_plane(rt), lambda: self._mcp_endpoint(rt))
        log.info("control plane on http://%s", http.listen)
        return front

    def _control_plane(self, rt: Runtime) -> Any:
        """The control plane's app with every route (/healthz too), built at its first request other than /healthz."""
        from .mcp.auth import TokenStore
        from .web.app import create_app
        from .web.metrics import MetricsEndpoint

        mcp = self._mcp_endpoint(rt)
        metrics = MetricsEndpoint(rt, TokenStore(rt.store, rt.events, rt.clock))
        from .web.webhooks import AlertmanagerWebhook

        alertmanager = AlertmanagerWebhook(self.engine, TokenStore(rt.store, rt.events, rt.clock))
        from .web.approvals import Approvals   # signed links and /approvals (jinja2 loads at the first page)

        approvals = Approvals(self.answers, TokenStore(rt.store, rt.events, rt.clock), rt.config)
        from .web.dashboard import Dashboard   # / and the dashboard's pages, behind the approvals page's login

        dashboard = Dashboard(approvals, self.engine)
        app = create_app(self.health, mcp=mcp, metrics=metrics, alertmanager=alertmanager, pages=approvals.routes(),
                         dashboard=dashboard.routes(), slack=self._slack.endpoint() if self._slack is not None else None)
        self._dashboard = dashboard
        return app

    def _mcp_endpoint(self, rt: Runtime) -> Any:
        """/mcp's ASGI endpoint (`mcp.worker`: a worker process started at its first request), made
        once; the front door serves /mcp with it, and so does the control plane's app."""
        if self._mcp is None:
            from .mcp.worker import McpWorker

            http = rt.config.file.http
            self._mcp = McpWorker(rt.config, http.listen, http.mcp_idle)
        return self._mcp
