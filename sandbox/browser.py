"""Debian's headless Chromium, driven over its DevTools protocol: open a page, wait for text,
click a button by its label, save a PNG. Enough for `make screenshots`; no browser download
(Chromium comes from apt, installed when asked)."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests
from websockets.sync.client import connect

# The machine's network is closed: without these, Chromium tries Google's services at every start.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def ensure_chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    print("Installing Debian's chromium (apt-get install chromium) for the screenshots")
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, stdout=subprocess.DEVNULL)
    return shutil.which("chromium") or "/usr/bin/chromium"


class Browser:
    def __init__(self, port: int, width: int = 1440, height: int = 1000) -> None:
        self.profile = tempfile.mkdtemp(prefix="novi-mailman-chromium-")
        self.process = subprocess.Popen(
            [ensure_chromium(), *FLAGS, f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}",
             "--remote-allow-origins=*", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                pages = requests.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
                page = next(p for p in pages if p.get("type") == "page")
                break
            except (requests.RequestException, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("chromium did not start") from None
                time.sleep(0.3)
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20)
        self.ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        ident = next(self.ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=300))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

    def open(self, url: str, wait_for: str, seconds: float = 45) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for(wait_for, seconds)

    def sign_in(self, ui: str, auth: str) -> None:
        """Log the UI in with the server's auth string, as its login page would: the UI keeps
        it (base64, under `prefect-password`) in the page's local storage."""
        self.call("Page.navigate", url=ui)
        deadline = time.monotonic() + 45
        while self.evaluate("document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.2)
        self.evaluate(f"localStorage.setItem('prefect-password', btoa({json.dumps(auth)}))")

    def wait_for(self, text: str, seconds: float = 45) -> None:
        deadline = time.monotonic() + seconds
        while not self.evaluate(f"document.body && document.body.innerText.includes({json.dumps(text)})"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the page never showed {text!r}")
            time.sleep(0.5)
        time.sleep(1.5)  # let the last requests and transitions settle

    def click(self, label: str) -> None:
        clicked = self.evaluate(f"""(() => {{
            const all = [...document.querySelectorAll('button, a, [role=button], [role=tab]')];
            const hit = all.find(e => e.innerText.trim() === {json.dumps(label)});
            if (hit) {{ hit.click(); return true; }} return false; }})()""")
        if not clicked:
            raise RuntimeError(f"no button {label!r} on the page")

    def rows(self) -> int:
        return int(self.evaluate("document.querySelectorAll('tr').length") or 0)

    def shot(self, path: Path, full_page: bool = False) -> Path:
        params = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000),
                              "scale": 1}
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))
        return path

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
