"""Screenshots of logged-in web pages with headless Chromium, driven over the DevTools protocol.

``chromium --screenshot`` cannot log in, so this starts Chromium with a debugging port, sets
the session cookies a test obtained (``Network.setCookie``), opens the page, waits until the
page shows some text the test names, and captures it (``Page.captureScreenshot``).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

CHROMIUM = "/usr/bin/chromium"


def chromium() -> str | None:
    return shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)


def screenshot(
    url: str, cookies: dict[str, str], out: Path, *, wait_for: str, size: tuple[int, int] = (1400, 900), timeout: float = 90
) -> Path:
    """``url`` as a logged-in user (``cookies`` for its host) to ``out`` (PNG), once the page's
    text contains ``wait_for``."""
    from websockets.sync.client import connect

    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed (bash install.sh installs it as root)")
    profile = Path(tempfile.mkdtemp(prefix="curate-chromium-"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"]
    proc = subprocess.Popen(
        [exe, *flags, "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        port_file = profile / "DevToolsActivePort"
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not open its debugging port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = json.loads(urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
        with connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=30) as ws:
            counter = iter(range(1, 10**6))

            def call(method: str, **params: object) -> dict:
                msg_id = next(counter)
                ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=max(1.0, deadline - time.monotonic())))
                    if msg.get("id") == msg_id:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return msg.get("result", {})

            call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)
            call("Network.enable")
            for name, value in cookies.items():
                call("Network.setCookie", name=name, value=value, url=url)
            call("Page.enable")
            call("Page.navigate", url=url)
            while True:
                text = call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''", returnByValue=True)
                page_text = str(text.get("result", {}).get("value", ""))
                if wait_for in page_text:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} never showed {wait_for!r}")
                time.sleep(0.5)
            time.sleep(1.5)  # let the last requests paint
            data = call("Page.captureScreenshot", format="png")["data"]
        out.write_bytes(base64.b64decode(data))
        return out, page_text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
