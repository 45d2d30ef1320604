"""A headless Chromium driven over the DevTools protocol on a pipe, standard library only: enough to open
a page, collect console errors and network requests, evaluate JavaScript and take a screenshot.

The browser is found on PATH or named by $ADDRINUSE_BROWSER. On Debian:
    apt-get install -y --no-install-recommends chromium-headless-shell
(measured here: 11 s, 85.7 MB downloaded, 288 MB on disk)."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

BROWSERS = ("chromium-headless-shell", "chromium", "chrome-headless-shell", "google-chrome", "chromium-browser")


def find_browser() -> str | None:
    """$ADDRINUSE_BROWSER, or a Chromium on PATH (Debian: apt-get install chromium-headless-shell)."""
    named = os.environ.get("ADDRINUSE_BROWSER")
    return named if named else next((p for p in map(shutil.which, BROWSERS) if p), None)


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: the
    browser reads commands on fd 3 and writes on fd 4, NUL-terminated JSON); standard library only."""

    def __init__(self, exe: str, profile: Path, width: int = 1000, height: int = 900):
        profile.mkdir(parents=True, exist_ok=True)
        self.log = open(profile / "stderr.log", "wb")  # a file: a pipe nobody reads could block the browser
        to_browser, from_browser = os.pipe(), os.pipe()
        # Above fd 10, so putting one on fd 3 or 4 cannot clobber the other.
        self.r_fd = fcntl.fcntl(to_browser[0], fcntl.F_DUPFD_CLOEXEC, 10)
        self.w_fd = fcntl.fcntl(from_browser[1], fcntl.F_DUPFD_CLOEXEC, 10)
        for fd in (*to_browser, *from_browser):
            if fd not in (to_browser[1], from_browser[0]):
                os.close(fd)
        self.send_fd, self.recv_fd = to_browser[1], from_browser[0]
        # --no-sandbox: Chromium refuses its sandbox as root, and unprivileged it needs user namespaces a
        # CI container may lack. The only page opened is our own file, whose CSP forbids scripts and fetches.
        args = ["--headless", "--no-sandbox", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                "--no-first-run", "--disable-gpu", "--hide-scrollbars", "--disable-extensions", "about:blank"]
        trampoline = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); " \
                     "os.execv(sys.argv[3], sys.argv[3:])"  # sh (dash) cannot redirect fds above 9
        self.proc = subprocess.Popen([sys.executable, "-c", trampoline, str(self.r_fd), str(self.w_fd), exe, *args],
                                     pass_fds=(self.r_fd, self.w_fd), stdout=subprocess.DEVNULL,
                                     stderr=self.log)
        os.close(self.r_fd)
        os.close(self.w_fd)
        self.buf, self.next_id, self.events = b"", 0, []
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Runtime", "Log", "Network", "Page"):
                self.call(f"{domain}.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.recv_fd], [], [], left)[0]:
                raise TimeoutError("no answer from the browser")
            chunk = os.read(self.recv_fd, 1 << 20)
            if not chunk:
                log = Path(self.log.name).read_text(errors="replace")
                raise RuntimeError(f"the browser exited: {log[-500:]}")
            self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self.send_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = next((e for e in self.events if e.get("method") == method), None)
            if found:
                return found
            self.events.append(self._read(deadline))

    def evaluate(self, expression: str):
        answer = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in answer, answer
        return answer["result"].get("value")

    def problems(self, own_url: str) -> list[str]:
        """Console errors and warnings, exceptions, logged errors, and any request for another resource."""
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry'].get('text')}")
            elif method == "Network.requestWillBeSent" and p["request"]["url"] != own_url:
                out.append(f"request: {p['request']['url'][:100]}")
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait()
        for fd in (self.send_fd, self.recv_fd):
            os.close(fd)
        self.log.close()
