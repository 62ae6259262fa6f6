"""A stand-in for vLLM's OpenAI server: prints vLLM's start-up lines and serves /health,
/v1/completions and /generate on --port (`--port N` or `--port=N`; other arguments are ignored).

Behaviour from the environment (files let a test decide the moment):
  FAKE_START_DELAY    seconds before it listens (default 0)
  FAKE_START_FILE     it listens only once this file exists
  FAKE_503_FILE       while this file exists, /health answers 503 (a dead engine)
  FAKE_HANG_FILE      while this file exists, /health never answers
  FAKE_WARMUP_LOG     append each POST body there (one JSON per line)
  FAKE_WARMUP_STATUS  HTTP status of POST answers (default 200)
  FAKE_IGNORE_TERM=1  ignore SIGTERM
  FAKE_GRAPH_CACHE=1  "compile" into $VLLM_CACHE_ROOT: reuse graph.bin when there, fail at start-up
                      as a corrupt torch.compile cache does when a file `stale` is there
SIGTERM: stops serving and exits 0, as vLLM does.
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port = 8000
for i, arg in enumerate(sys.argv):
    if arg == "--port":
        port = int(sys.argv[i + 1])
    elif arg.startswith("--port="):
        port = int(arg.split("=", 1)[1])


def log(text):
    print(f"INFO 05-09 10:00:00 [fake_vllm.py:1] {text}", flush=True)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the output to the lines a test expects
        pass

    def do_GET(self):
        if self.path != "/health":
            return self._answer(404, b"")
        hang = os.environ.get("FAKE_HANG_FILE")
        if hang and os.path.exists(hang):
            time.sleep(3600)
        dead = os.environ.get("FAKE_503_FILE")
        if dead and os.path.exists(dead):
            return self._answer(503, b"")
        self._answer(200, b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        record = os.environ.get("FAKE_WARMUP_LOG")
        if record:
            with open(record, "a") as handle:
                handle.write(json.dumps({"path": self.path, "body": json.loads(body)}) + "\n")
        status = int(os.environ.get("FAKE_WARMUP_STATUS", "200"))
        self._answer(status, json.dumps({"choices": [{"text": " world"}]}).encode())

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def compile_graphs(root):
    os.makedirs(root, exist_ok=True)
    if os.path.exists(os.path.join(root, "stale")):
        print("RuntimeError: failed to load torch_compile_cache: corrupt cache entry", file=sys.stderr, flush=True)
        sys.exit(1)
    graph = os.path.join(root, "graph.bin")
    if os.path.exists(graph):
        log(f"Directly load the compiled graph(s) from the cache {graph}")
    else:
        log(f"Compiling a graph; saved to {graph}")
        with open(graph, "w") as handle:
            handle.write("compiled")


def main():
    if os.environ.get("FAKE_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    log(f"vLLM API server version 0.0-fake, pid {os.getpid()}")
    time.sleep(float(os.environ.get("FAKE_START_DELAY", "0")))
    if os.environ.get("FAKE_GRAPH_CACHE") == "1":
        compile_graphs(os.environ["VLLM_CACHE_ROOT"])
    start_file = os.environ.get("FAKE_START_FILE")
    while start_file and not os.path.exists(start_file):
        time.sleep(0.02)
    log("Loading weights took 0.01 seconds")
    log("# GPU blocks: 1000, # CPU blocks: 100")
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(
        f"INFO:     Uvicorn running on http://127.0.0.1:{port} (Press CTRL+C to quit)",
        file=sys.stderr,
        flush=True,
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while True:
        time.sleep(0.5)


main()
