"""Summarises a py-spy raw (collapsed-stack) profile of `localllm serve`: per thread kind
(engine thread, event loop, thread pool), the share of samples by the deepest localllm frame
and by leaf frame.

    scripts/profile_server.sh TAG [CONCURRENCY] [REQUESTS]    # writes /tmp/prof_TAG.raw
    .venv/bin/python scripts/profile_summary.py /tmp/prof_TAG.raw [TOP]
"""
import collections
import re
import sys

path = sys.argv[1]
groups = collections.defaultdict(collections.Counter)
leaves = collections.defaultdict(collections.Counter)
totals = collections.Counter()
for line in open(path):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n)
    frames = stack.split(";")
    if any("core.py" in f and "run" in f for f in frames) or any("EngineCore" in f for f in frames):
        kind = "engine"
    elif any("thread.py" in f for f in frames):
        kind = "pool"
    else:
        kind = "loop"
    totals[kind] += n
    own = [f for f in frames if "localllm/" in f]
    key = re.sub(r":\d+\)", ")", own[-1]) if own else "(other)"
    groups[kind][key] += n
    leaves[kind][re.sub(r":\d+\)", ")", frames[-1])] += n
for kind in ("engine", "loop", "pool"):
    if not totals[kind]:
        continue
    print(f"== {kind}: {totals[kind]} samples")
    for key, n in groups[kind].most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 10):
        print(f"  {100*n/totals[kind]:5.1f}%  {key}")
    print("  leaves:")
    for key, n in leaves[kind].most_common(6):
        print(f"  {100*n/totals[kind]:5.1f}%  {key}")
