"""One scene per browser session: ``brainsegfounder web --sessions N``.

The front answers on ``--host``/``--port``. Each new visitor gets their own app process (its own
MRML scene, segmentation, corrections and jobs) on a free loopback port, reached through the front
under ``s/<token>/``: page, assets and the trame WebSocket alike (the trame client addresses them
relative to the page, so the prefix is all it takes; a reverse proxy above may add its own). A
reload keeps the session; a session whose page has been closed for ``idle_s`` seconds ends (the
app's own idle shutdown) and frees its place. At most ``limit`` sessions live at once.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

from aiohttp import ClientSession, ClientTimeout, WSMsgType, web

# Headers that describe one hop of the connection, not the content (RFC 9110, 7.6.1).
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}
HOP_HEADERS |= {"host", "content-length"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Session:
    token: str
    port: int
    process: subprocess.Popen

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class SessionFront:
    """Starts, routes to and ends the per-session app processes."""

    def __init__(self, app_args: List[str], limit: int, idle_s: int, start_s: float = 120.0):
        self.app_args = app_args  # the web command's own options, passed to every session's app
        self.limit = limit
        self.idle_s = idle_s
        self.start_s = start_s
        self.sessions: Dict[str, Session] = {}
        self.http: Optional[ClientSession] = None

    # -- sessions ---------------------------------------------------------------------------------

    def live(self) -> int:
        for token in [t for t, s in self.sessions.items() if not s.alive]:
            del self.sessions[token]  # its page was closed for idle_s: the app ended itself
        return len(self.sessions)

    async def _start(self) -> Session:
        port = free_port()
        command = [sys.executable, "-m", "brainsegfounder", "web", *self.app_args]
        command += ["--host", "127.0.0.1", "--port", str(port), "--idle-exit", str(self.idle_s)]
        session = Session(secrets.token_urlsafe(16), port, subprocess.Popen(command, stdin=subprocess.DEVNULL))
        self.sessions[session.token] = session  # counted from now: a burst of visitors cannot pass the limit
        deadline = asyncio.get_running_loop().time() + self.start_s
        while session.alive and asyncio.get_running_loop().time() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return session
            except OSError:
                await asyncio.sleep(0.25)
        self.end(session)
        raise web.HTTPBadGateway(text="the session's app did not start; the server's log says why\n")

    def end(self, session: Session) -> None:
        self.sessions.pop(session.token, None)
        if session.alive:
            session.process.terminate()
            try:
                session.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                session.process.kill()

    # -- handlers ---------------------------------------------------------------------------------

    async def new_session(self, request: web.Request) -> web.Response:
        if self.live() >= self.limit:
            raise web.HTTPServiceUnavailable(
                text=f"all {self.limit} sessions of this server are in use; close another tab of it, or try again "
                f"when one has been closed for {self.idle_s} s\n"
            )
        session = await self._start()
        raise web.HTTPFound(f"s/{session.token}/")  # relative: works under a reverse proxy's prefix too

    async def route(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.match_info["token"])
        if session is None or not session.alive:
            raise web.HTTPNotFound(text="this session has ended (its page was closed); open the server's address\n")
        tail = request.match_info["tail"]
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, session, tail)
        return await self._http(request, session, tail)

    async def status(self, request: web.Request) -> web.Response:
        """For a health check: answers without starting a session."""
        return web.json_response({"sessions": self.live(), "limit": self.limit, "idle_s": self.idle_s})

    async def add_slash(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{request.match_info['token']}/")

    async def _http(self, request: web.Request, session: Session, tail: str) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        url = f"http://127.0.0.1:{session.port}/{tail}"
        body = await request.read()
        async with self.http.request(request.method, url, params=request.query, headers=headers, data=body) as answer:
            content = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
            return web.Response(body=content, status=answer.status, headers=kept)

    async def _websocket(self, request: web.Request, session: Session, tail: str) -> web.WebSocketResponse:
        browser = web.WebSocketResponse(max_msg_size=0)
        await browser.prepare(request)
        url = f"http://127.0.0.1:{session.port}/{tail}"
        async with self.http.ws_connect(url, max_msg_size=0) as app:
            await asyncio.gather(_pump(browser, app), _pump(app, browser), return_exceptions=True)
        return browser

    # -- the server -------------------------------------------------------------------------------

    def application(self) -> web.Application:
        application = web.Application(client_max_size=0)  # uploads are limited by the app itself
        application.router.add_get("/", self.new_session, allow_head=False)  # a HEAD starts nothing
        application.router.add_get("/status", self.status)
        application.router.add_get("/s/{token}", self.add_slash)
        application.router.add_route("*", "/s/{token}/{tail:.*}", self.route)
        application.on_startup.append(self._open)
        application.on_cleanup.append(self._close)
        return application

    async def _open(self, _app) -> None:
        self.http = ClientSession(timeout=ClientTimeout(total=None), auto_decompress=False)

    async def _close(self, _app) -> None:
        for session in list(self.sessions.values()):
            self.end(session)
        await self.http.close()


async def _pump(source, sink) -> None:
    """Messages from one WebSocket to the other until either closes, then close the other."""
    try:
        async for message in source:
            if message.type == WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            else:
                break
    finally:
        await sink.close()


def serve(app_args: List[str], host: str, port: int, limit: int, idle_s: int) -> None:
    front = SessionFront(app_args, limit, idle_s)
    web.run_app(front.application(), host=host, port=port, print=None, handle_signals=True)
