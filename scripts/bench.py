"""Load generator for any OpenAI-compatible server; the same tool as `localllm bench`.

    python scripts/bench.py http://127.0.0.1:8080 --concurrency 1 8 --max-tokens 128
    python scripts/bench.py http://127.0.0.1:8080 --workload shared-prefix --concurrency 1 --requests 8
    python scripts/bench.py --help      # workloads, lengths, --json, --plot

The code lives in localllm/bench/ (workloads, runner, stats, report).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from localllm.bench.commands import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
