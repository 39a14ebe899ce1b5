"""Benchmark tool: workloads, runner, statistics and report for any OpenAI-compatible server.

`localllm bench URL` (commands.py) and scripts/bench.py drive it; scripts/compare.py runs it
against llama-server and `localllm serve` side by side.
"""
