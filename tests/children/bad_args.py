"""Rejects its arguments like vLLM's argparse does: usage and an error on stderr, status 2."""

import sys

print("usage: api_server.py [-h] [--host HOST] [--port PORT] ...", file=sys.stderr)
print("api_server.py: error: unrecognized arguments: --num-scheduler-steps 8", file=sys.stderr)
sys.exit(2)
