"""One small driver interface over three engines, so that every scenario is written once.

- Chromium: Debian's `chromium`, through Playwright (as tests/browser).
- Firefox ESR: Debian's `firefox-esr`, over WebDriver BiDi with puppeteer-core (a node process,
  firefox_bridge.mjs, answering JSON lines).
- WebKit: Debian's WebKitWebDriver driving the MiniBrowser of libwebkit2gtk-4.1, over plain
  WebDriver HTTP, on an Xvfb display (WebKitGTK has no headless mode).

A context is a cookie jar of its own (a browser context, a Firefox user context, a WebDriver
session); a tab is a page in it. `eval` takes a JavaScript expression, awaits it when it is a
promise, and answers its JSON value.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.support.servers import free_port

HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
FIREFOX = Path("/usr/bin/firefox-esr")
WEBKIT_DRIVER = Path("/usr/bin/WebKitWebDriver")
MINIBROWSER = Path("/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser")
XVFB = Path("/usr/bin/Xvfb")
# Where X servers put their sockets and lock files (fixed by X11, not a temporary file of ours).
X11_SOCKETS = Path("/tmp/.X11-unix")  # noqa: S108
X11_LOCKS = Path("/tmp")  # noqa: S108
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Tab(Protocol):
    async def goto(self, url: str) -> None: ...

    async def eval(self, expression: str) -> Any: ...

    async def close(self) -> None: ...


class Context(Protocol):
    async def new_tab(self) -> Tab: ...

    async def close(self) -> None: ...


class Engine(Protocol):
    name: str
    version: str

    async def new_context(self) -> Context: ...


def missing(engine: str) -> str | None:
    """Why this machine cannot run the engine (None: it can)."""
    needs = {
        "chromium": [(CHROMIUM, "chromium")],
        "firefox": [(FIREFOX, "firefox-esr"), (Path(shutil.which("node") or "/-"), "nodejs")],
        "webkit": [
            (WEBKIT_DRIVER, "webkit2gtk-driver"),
            (MINIBROWSER, "libwebkit2gtk-4.1-0"),
            (XVFB, "xvfb"),
        ],
    }[engine]
    absent = [package for path, package in needs if not os.access(path, os.X_OK)]
    if absent:
        return f"{engine}: not installed (apt-get install {' '.join(absent)})"
    if engine == "firefox" and not (HERE / "node_modules" / "puppeteer-core").is_dir():
        return "firefox: puppeteer-core is not installed (npm ci --prefix tests/engines)"
    return None


# ------------------------------------------------------------------------------ Chromium


@dataclass
class _PlaywrightTab:
    page: Any

    async def goto(self, url: str) -> None:
        await self.page.goto(url)

    async def eval(self, expression: str) -> Any:
        return await self.page.evaluate(expression)

    async def close(self) -> None:
        await self.page.close()


@dataclass
class _PlaywrightContext:
    context: Any

    async def new_tab(self) -> Tab:
        return _PlaywrightTab(await self.context.new_page())

    async def close(self) -> None:
        await self.context.close()


@dataclass
class _Chromium:
    browser: Any
    name: str = "chromium"
    version: str = ""

    async def new_context(self) -> Context:
        context = await self.browser.new_context()
        context.set_default_timeout(20_000)
        return _PlaywrightContext(context)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Engine]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield _Chromium(browser, version=f"Chromium {browser.version}")
        finally:
            await browser.close()


# ------------------------------------------------------------------------------- Firefox


class _Bridge:
    """The node process that drives Firefox: requests out, answers matched by id."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            answer = json.loads(line)
            future = self.waiting.pop(answer["id"], None)
            if future is None or future.done():
                continue
            if "error" in answer:
                future.set_exception(RuntimeError(f"firefox: {answer['error']}"))
            else:
                future.set_result(answer["value"])
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("the firefox bridge exited"))

    async def call(self, op: str, **args: Any) -> Any:
        assert self.process.stdin is not None
        request_id = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        self.process.stdin.write((json.dumps({"id": request_id, "op": op, **args}) + "\n").encode())
        await self.process.stdin.drain()
        return await asyncio.wait_for(future, timeout=60)


@dataclass
class _FirefoxTab:
    bridge: _Bridge
    id: str

    async def goto(self, url: str) -> None:
        await self.bridge.call("goto", tab=self.id, url=url)

    async def eval(self, expression: str) -> Any:
        return await self.bridge.call("eval", tab=self.id, expression=expression)

    async def close(self) -> None:
        await self.bridge.call("closeTab", tab=self.id)


@dataclass
class _FirefoxContext:
    bridge: _Bridge
    id: str

    async def new_tab(self) -> Tab:
        return _FirefoxTab(self.bridge, await self.bridge.call("tab", context=self.id))

    async def close(self) -> None:
        await self.bridge.call("closeContext", context=self.id)


@dataclass
class _Firefox:
    bridge: _Bridge
    name: str = "firefox"
    version: str = ""

    async def new_context(self) -> Context:
        return _FirefoxContext(self.bridge, await self.bridge.call("context"))


@contextlib.asynccontextmanager
async def firefox() -> AsyncIterator[Engine]:
    process = await asyncio.create_subprocess_exec(
        "node",
        str(HERE / "firefox_bridge.mjs"),
        cwd=HERE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    bridge = _Bridge(process)
    try:
        version = await bridge.call("launch", executable=str(FIREFOX))
        yield _Firefox(bridge, version=f"Firefox {version}")
    finally:
        assert process.stdin is not None
        process.stdin.close()  # the bridge closes Firefox and exits
        try:
            await asyncio.wait_for(process.wait(), timeout=20)
        except TimeoutError:
            process.kill()
            await process.wait()
        bridge.reader.cancel()


# -------------------------------------------------------------------------------- WebKit


class _WebDriverSession:
    """One WebKitWebDriver session: one MiniBrowser, one cookie jar. WebDriver talks to one
    window at a time, so every command switches to its tab first, under a lock."""

    def __init__(self, http: httpx.AsyncClient, session_id: str, first_window: str) -> None:
        self.http = http
        self.url = f"/session/{session_id}"
        self.lock = asyncio.Lock()
        self.first_window: str | None = first_window
        self.current = first_window

    async def command(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.http.request(method, self.url + path, json=body)
        answer = response.json()
        if response.status_code != 200:
            raise RuntimeError(f"webkit: {method} {path}: {answer.get('value')}")
        return answer["value"]

    async def on(self, window: str, method: str, path: str, body: Any = None) -> Any:
        async with self.lock:
            if window != self.current:
                await self.command("POST", "/window", {"handle": window})
                self.current = window
            return await self.command(method, path, body)


# An expression's value (or its promise's) through the asynchronous script's callback.
_ASYNC_SCRIPT = """const done = arguments[arguments.length - 1];
Promise.resolve().then(() => (%s)).then(
  (value) => done({value: value === undefined ? null : value}),
  (error) => done({error: String(error && error.stack || error)}));"""


@dataclass
class _WebKitTab:
    session: _WebDriverSession
    window: str

    async def goto(self, url: str) -> None:
        await self.session.on(self.window, "POST", "/url", {"url": url})

    async def eval(self, expression: str) -> Any:
        outcome = await self.session.on(
            self.window,
            "POST",
            "/execute/async",
            {"script": _ASYNC_SCRIPT % expression, "args": []},
        )
        if "error" in outcome:
            raise RuntimeError(f"webkit: {outcome['error']}")
        return outcome["value"]

    async def close(self) -> None:
        await self.session.on(self.window, "DELETE", "/window")
        self.session.current = ""


@dataclass
class _WebKitContext:
    session: _WebDriverSession
    driver: subprocess.Popen[bytes]

    async def new_tab(self) -> Tab:
        if self.session.first_window is not None:  # the session's own window comes first
            window, self.session.first_window = self.session.first_window, None
            return _WebKitTab(self.session, window)
        async with self.session.lock:
            # Windows rather than tabs: each is visible, so none has its timers throttled.
            made = await self.session.command("POST", "/window/new", {"type": "window"})
        return _WebKitTab(self.session, made["handle"])

    async def close(self) -> None:
        try:
            await self.session.command("DELETE", "")
        finally:
            await self.session.http.aclose()
            await asyncio.to_thread(_stop, self.driver)


@dataclass
class _WebKit:
    display: str
    name: str = "webkit"
    version: str = ""

    async def new_context(self) -> Context:
        """A WebKitWebDriver of its own: it holds one session (one MiniBrowser) at a time."""
        port = free_port()
        env = {**os.environ, "DISPLAY": self.display}
        driver = await asyncio.to_thread(_spawn, [str(WEBKIT_DRIVER), f"--port={port}"], env)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60)
        try:
            give_up = time.monotonic() + 10
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/status")).status_code == 200:
                        break
                assert time.monotonic() < give_up, "WebKitWebDriver did not start"
                await asyncio.sleep(0.05)
            capabilities = {
                "browserName": "MiniBrowser",
                "acceptInsecureCerts": True,  # the service's self-signed development certificate
                "webkitgtk:browserOptions": {"binary": str(MINIBROWSER), "args": ["--automation"]},
            }
            response = await http.post(
                "/session", json={"capabilities": {"alwaysMatch": capabilities}}
            )
            value = response.json()["value"]
            if response.status_code != 200:
                raise RuntimeError(f"webkit: no session: {value}")
            self.version = f"WebKitGTK {value['capabilities']['browserVersion']}"
            session = _WebDriverSession(http, value["sessionId"], "")
            session.first_window = session.current = await session.command("GET", "/window")
        except BaseException:
            await http.aclose()
            await asyncio.to_thread(_stop, driver)
            raise
        return _WebKitContext(session, driver)


def _free_display() -> int:
    for number in range(90, 200):
        if (
            not (X11_SOCKETS / f"X{number}").exists()
            and not (X11_LOCKS / f".X{number}-lock").exists()
        ):
            return number
    raise RuntimeError("no free X display number")


def _spawn(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def webkit() -> AsyncIterator[Engine]:
    display = _free_display()
    xvfb = await asyncio.to_thread(
        _spawn, [str(XVFB), f":{display}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"]
    )
    try:
        give_up = time.monotonic() + 10
        while not (X11_SOCKETS / f"X{display}").exists():
            assert xvfb.poll() is None, "Xvfb exited"
            assert time.monotonic() < give_up, "Xvfb did not start"
            await asyncio.sleep(0.05)
        yield _WebKit(f":{display}")
    finally:
        await asyncio.to_thread(_stop, xvfb)
