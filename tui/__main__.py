"""`python -m tui [--url URL] [--api-key KEY]`: the same as `localllm tui`."""
from __future__ import annotations

import argparse
import sys

from tui.client import DEFAULT_URL
from tui.launcher import run_tui

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tui")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--api-key")
    parser.add_argument("--start-server", action="store_true")
    args = parser.parse_args()
    sys.exit(run_tui(args.url, args.api_key, args.start_server))
