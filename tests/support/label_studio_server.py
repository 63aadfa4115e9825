"""A real Label Studio server for the tests, from its own venv (``install.sh --with-label-studio``).

``label-studio init`` makes each user with a known legacy API token (the first run also makes
the organisation, with legacy tokens enabled, and the SQLite database: ~60 s of migrations
here), then ``label-studio start --no-browser`` serves a temp data folder on a free loopback
port. The version check against PyPI is off (no network here). ``start_label_studio``
raises ``LabelStudioUnavailable`` with the reason when it cannot start one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.vllm_server import free_port

REPO = Path(__file__).resolve().parents[2]
LABEL_STUDIO = REPO / ".venv-label-studio" / "bin" / "label-studio"
VERSION = "1.23.2"


class LabelStudioUnavailable(RuntimeError):
    pass


@dataclass
class LabelStudioServer:
    folder: Path
    port: int
    proc: subprocess.Popen | None = None
    users: dict[str, str] = field(default_factory=dict)  # email -> legacy API token
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.folder / "data"),
            "COLLECT_ANALYTICS": "false",
        }

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [str(LABEL_STUDIO), *args, "--data-dir", str(self.folder / "data")]
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False, cwd=self.folder)

    def add_user(self, email: str) -> str:
        """A user with a legacy API token (the first one owns the organisation)."""
        token, password = f"ls-{uuid.uuid4().hex}", f"pw-{uuid.uuid4().hex[:16]}"
        first = ["--enable-legacy-api-token"] if not self.users else []
        proc = self.cli("init", "--username", email, "--password", password, "--user-token", token, *first)
        if proc.returncode != 0 or "successfully initialized" not in proc.stdout:
            raise LabelStudioUnavailable(f"label-studio init failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")
        self.users[email], self.passwords[email] = token, password
        return token

    def start(self, timeout: float = 180) -> None:
        log = open(self.folder / "server.log", "w")  # noqa: SIM115 - the server's output while it runs
        cmd = [str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*cmd, "--data-dir", str(self.folder / "data")], env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabelStudioUnavailable(f"label-studio start exited {self.proc.returncode}: {self.log()[-1500:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise LabelStudioUnavailable(f"Label Studio did not answer on {self.url} within {timeout:.0f} s: {self.log()[-1500:]}")

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api(self, email: str) -> httpx.Client:
        """An HTTP client acting as that user (``Authorization: Token ...``)."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.users[email]}"}, timeout=60)

    def session_cookies(self, email: str) -> dict[str, str]:
        """Logged in through the login form, as a browser would: the session's cookies."""
        with httpx.Client(base_url=self.url, follow_redirects=False, timeout=60) as web:
            form = web.get("/user/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
            assert token, "no CSRF token on Label Studio's login page"
            done = web.post(
                "/user/login/",
                data={"csrfmiddlewaretoken": token.group(1), "email": email, "password": self.passwords[email]},
                headers={"Referer": f"{self.url}/user/login/"},
            )
            assert done.status_code in (302, 303), f"login as {email} failed (HTTP {done.status_code})"
            return dict(web.cookies)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_label_studio(emails: list[str]) -> LabelStudioServer:
    """A running server whose users are ``emails`` (the first one owns the organisation)."""
    if not LABEL_STUDIO.exists():
        raise LabelStudioUnavailable(f"{LABEL_STUDIO} not found: run `bash install.sh --with-label-studio` (label-studio=={VERSION})")
    server = LabelStudioServer(Path(tempfile.mkdtemp(prefix="curate-ls-")), free_port())
    try:
        for email in emails:
            server.add_user(email)
        server.start()
    except BaseException:
        server.close()
        raise
    return server
