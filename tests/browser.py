"""Headless Chromium driven through the DevTools protocol, for tests of the HTML report.

    with Browser.start() as browser:
        page = browser.open(path)              # waits for the page's `data-ready`, with a stated bound
        page.evaluate("document.title")
        page.screenshot(png_path)
        page.errors                             # uncaught exceptions, console errors, failed loads

The browser runs with a fresh profile in a temporary directory, no network services, and is killed with its
profile removed at the end. `Browser.start()` raises `BrowserMissing` when no Chromium is installed.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import websocket  # websocket-client: the DevTools protocol speaks WebSocket, which the standard library lacks

__all__ = ["Browser", "BrowserMissing", "Page", "chromium_path"]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
    "--window-size=1400,1000",
)
START_SECONDS = 60  # a loaded machine starts Chromium slowly; this bounds a hang, it measures nothing


class BrowserMissing(RuntimeError):
    """No Chromium on this machine."""


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _end_group(process: subprocess.Popen[bytes]) -> None:
    """Kill Chromium and every process it started (its own session), and wait until none is left: a helper
    still running would write into the profile after it is removed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


class Page:
    """One tab, spoken to over its DevTools WebSocket."""

    def __init__(self, url: str) -> None:
        self.socket = websocket.create_connection(url, timeout=START_SECONDS, suppress_origin=True)
        self.ids = itertools.count(1)
        self.errors: list[str] = []
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            words = (str(arg.get("value", arg.get("description"))) for arg in params["args"])
            self.errors.append("console: " + " ".join(words))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"log: {params['entry'].get('text')}")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self._event(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float) -> float:
        """Poll `expression` until it is truthy; return the seconds it took, or raise TimeoutError."""
        started = time.monotonic()
        while not self.evaluate(expression):
            if time.monotonic() - started > seconds:
                raise TimeoutError(f"{expression} still false after {seconds} s; page errors: {self.errors}")
            time.sleep(0.05)
        return time.monotonic() - started

    def screenshot(self, path: Path, *, full_page: bool = True) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": metrics["width"], "height": metrics["height"], "scale": 1}
            params["captureBeyondViewport"] = True
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.socket.close()


class Browser:
    """A headless Chromium process with a fresh profile."""

    def __init__(self, process: subprocess.Popen[bytes], profile: str, port: int) -> None:
        self.process = process
        self.profile = profile
        self.port = port
        self.pages: list[Page] = []

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[Browser]:
        executable = chromium_path()
        if executable is None:
            raise BrowserMissing("no chromium on PATH: install Debian's chromium (apt-get install chromium)")
        profile = tempfile.mkdtemp(prefix="pagemap-chromium-")
        process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        browser: Browser | None = None
        try:
            port_file = Path(profile, "DevToolsActivePort")
            deadline = time.monotonic() + START_SECONDS
            while not (port_file.exists() and port_file.read_text().strip()):
                if process.poll() is not None:
                    raise RuntimeError(f"chromium exited with status {process.returncode} before it listened")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"chromium wrote no DevToolsActivePort within {START_SECONDS} s")
                time.sleep(0.05)
            browser = cls(process, profile, int(port_file.read_text().split()[0]))
            yield browser
        finally:
            for page in browser.pages if browser is not None else []:
                page.close()
            _end_group(process)
            shutil.rmtree(profile, ignore_errors=True)

    def _targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=START_SECONDS) as answer:
            targets: list[dict[str, Any]] = json.load(answer)
            return targets

    def open(self, path: Path, *, ready_seconds: float = START_SECONDS) -> tuple[Page, float]:
        """Open `path` in the browser's tab; return the page and the seconds until it said it was drawn."""
        target = next(t for t in self._targets() if t.get("type") == "page")
        page = Page(target["webSocketDebuggerUrl"])
        self.pages.append(page)
        started = time.monotonic()
        page.call("Page.navigate", url=path.resolve().as_uri())
        page.wait_for("document.readyState === 'complete' && document.body?.dataset.ready === '1'", ready_seconds)
        return page, time.monotonic() - started
