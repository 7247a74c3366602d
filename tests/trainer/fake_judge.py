"""A judge whose verdicts a test controls: a tiny in-process OpenAI-compatible chat server.

It reads the criterion's title out of the rendered judge prompt (`## Criterion: <title>`) and answers
`{"satisfied": true}` when the title is in `satisfied`, else false; it counts the requests it gets.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeJudge:
    def __init__(self, satisfied: set[str]) -> None:
        self.satisfied = satisfied
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""
        self._lock = threading.Lock()

    def answer(self, body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        title = re.search(r"^## Criterion: (.+)$", prompt, re.MULTILINE)
        verdict = title is not None and title.group(1).strip() in self.satisfied
        return json.dumps({"satisfied": verdict, "reason": "scripted"})


@contextmanager
def fake_judge(satisfied: set[str]) -> Iterator[FakeJudge]:
    judge = FakeJudge(satisfied)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with judge._lock:
                judge.requests.append(body)
                judge.headers.append(dict(self.headers))
            if self.path != "/v1/chat/completions":
                self.send_response(404)
                self.end_headers()
                return
            reply = {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": judge.answer(body)}}]
            }
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None: ...

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    judge.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield judge
    finally:
        server.shutdown()
        server.server_close()
