"""MQTT.js clients run by node (tests/js/node_client.mjs) or in a page of headless
Chromium (tests/js/browser.mjs); both print one JSON line per event."""
from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
from pathlib import Path

from tests.support.node import ROOT

JS = ROOT / "tests" / "js"


def require_js() -> None:
    """The node packages are installed by `make install` (npm ci in tests/js)."""
    if shutil.which("node") is None:
        raise RuntimeError("node is not installed; `make install` installs it (as root)")
    if not (JS / "node_modules" / "mqtt").is_dir() or not (JS / "node_modules" / "playwright-core").is_dir():
        raise RuntimeError("tests/js/node_modules is missing; run `make install` (npm ci in tests/js)")


class JsClient:
    def __init__(self, script: str, **options):
        require_js()
        self.proc = subprocess.Popen(["node", str(JS / script), json.dumps(options)], cwd=JS,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: queue.Queue = queue.Queue()
        self.seen: list = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def expect(self, name: str, timeout: float = 60.0) -> dict:
        while True:
            try:
                ev = self.events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no {name!r} from {self.proc.args[1]} in {timeout}s; saw {self.seen}; "
                                   f"stderr: {self.stderr()}") from None
            self.seen.append(ev)
            if ev["event"] == name:
                return ev
            if ev["event"] in ("error", "exit"):
                raise AssertionError(f"{self.proc.args[1]}: {ev} before {name!r}; saw {self.seen}; "
                                     f"stderr: {self.stderr()}")

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        return self.proc.stderr.read()[-3000:]

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()
