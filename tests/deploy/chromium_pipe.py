"""A headless Chromium driven over --remote-debugging-pipe, for the page of `cnn serve`.

DevTools-protocol messages are NUL-separated JSON on two pipes: Chromium reads
commands on its fd 3 and writes answers on its fd 4. That needs no websocket
library and no free port, and the browser dies with its test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    def __init__(self, binary: str, timeout: float = 60):
        self.timeout = timeout
        child_in, self._write = os.pipe()
        self._read, child_out = os.pipe()

        def pipes_on_3_and_4():  # through high numbers first, so neither dup2 overwrites the other's source
            high_in, high_out = os.dup2(child_in, 100), os.dup2(child_out, 101)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.process = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu",
                                         "--remote-debugging-pipe", "about:blank"],
                                        close_fds=False, preexec_fn=pipes_on_3_and_4,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_in)
        os.close(child_out)
        self._buffer, self._id, self._session = b"", 0, None

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buffer:
                assert time.monotonic() < deadline, f"Chromium did not answer {method}"
                chunk = os.read(self._read, 1 << 16)
                assert chunk, "Chromium closed its pipe"
                self._buffer += chunk
            raw, _, self._buffer = self._buffer.partition(b"\0")
            answer = json.loads(raw)
            if answer.get("id") == self._id:  # events and other answers are skipped
                assert "error" not in answer, answer
                return answer["result"]

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": url}, session=False)["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                  session=False)["sessionId"]

    def js(self, expression: str):
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def wait_for(self, expression: str):
        """The first truthy value of `expression`, polled."""
        deadline = time.monotonic() + self.timeout
        while not (value := self.js(expression)):
            assert time.monotonic() < deadline, f"never came true: {expression}"
            time.sleep(0.1)
        return value

    def choose_file(self, selector: str, path) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(path)]})  # fires the change event

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        os.close(self._write)
        os.close(self._read)
