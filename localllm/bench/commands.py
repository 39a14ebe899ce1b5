"""`localllm bench URL ...` (also `python scripts/bench.py URL ...`)."""
from __future__ import annotations

import argparse
import asyncio
import sys

from localllm.bench.report import format_notes, plot, table_header, table_row, write_json
from localllm.bench.workloads import WORKLOADS, Length, WorkloadConfig

COMMANDS = {"bench"}

DESCRIPTION = """Load generator for any OpenAI-compatible server: streamed /v1/completions at each
concurrency level of a sweep (closed loop). Reports requests/s, aggregate output tokens/s,
TTFT, inter-token latency (ITL, gaps between streamed chunks) and end-to-end latency at
p50/p95/p99, and errors; as a table, JSON (--json) and a PNG plot (--plot).

workloads:
  plain          short story prompts (or --prompt-tokens synthetic words), --temperature
  shared-prefix  groups of --group-size requests sharing a --prefix-tokens prefix with distinct
                 tails; the first of each group is `cold`, the rest wait for it and are `warm`
  repeated       --repeat-fraction of requests exactly repeat an earlier one; all at temperature 0
  mixed          a shared system prompt (--prefix-tokens / 2 words), short distinct questions,
                 --repeat-fraction exact repeats; all at temperature 0

plain and shared-prefix send `X-LocalLLM-Cache: off` so localllm's response cache cannot
answer; repeated and mixed let the server's caches work. Lengths are N or LO:HI (sampled).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="server root, e.g. http://127.0.0.1:8080")
    parser.add_argument("--workload", choices=WORKLOADS, default="plain")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="levels of the sweep")
    parser.add_argument("--rounds", type=int, default=2, help="requests per level = rounds x concurrency")
    parser.add_argument("--requests", type=int, help="requests per level (overrides --rounds)")
    parser.add_argument("--max-tokens", type=Length.parse, default=Length(128, 128), help="output tokens")
    parser.add_argument("--prompt-tokens", type=Length.parse, help="synthetic prompt (or tail) words")
    parser.add_argument("--prefix-tokens", type=int, default=1000, help="shared prefix words")
    parser.add_argument("--group-size", type=int, default=4, help="shared-prefix: requests per prefix")
    parser.add_argument("--repeat-fraction", type=float, default=0.3)
    parser.add_argument("--temperature", type=float, default=0.8, help="plain and shared-prefix")
    parser.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                        help="let requests stop at end of text (default: exactly max tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="`model` field of the requests")
    parser.add_argument("--api-key", dest="api_key")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds without bytes before a request fails")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="write the report as JSON (- for stdout)")
    parser.add_argument("--plot", dest="plot_path", metavar="PNG", help="write a plot across the sweep")


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="load-test an OpenAI-compatible server", description=DESCRIPTION,
                            formatter_class=_Formatter)
    add_arguments(parser)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def workload_from(args: argparse.Namespace) -> WorkloadConfig:
    return WorkloadConfig(name=args.workload, max_tokens=args.max_tokens, prompt_tokens=args.prompt_tokens,
                          prefix_tokens=args.prefix_tokens, group_size=args.group_size,
                          repeat_fraction=args.repeat_fraction, temperature=args.temperature,
                          ignore_eos=args.ignore_eos, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    """Run the sweep, print the table as levels finish, then write JSON and the plot if asked.
    Exit status 1 when any request failed."""
    from localllm.bench.runner import RunConfig, run_sweep  # aiohttp loads only when benchmarking

    try:
        workload = workload_from(args)
        config = RunConfig(args.url, args.model, args.api_key, args.timeout)
    except ValueError as exc:
        print(f"localllm bench: {exc}", file=sys.stderr)
        return 2
    quiet = args.json_path == "-"
    log = (lambda text: print(text, file=sys.stderr)) if quiet else print
    log(f"{workload.name} workload against {config.base_url}; max tokens {workload.max_tokens}")
    log(table_header())

    def on_level(summary: dict) -> None:
        log(table_row(summary))
        for tag, tagged in summary["by_tag"].items():
            log(table_row(tagged, label=f" {tag}"))

    report = asyncio.run(run_sweep(config, workload, args.concurrency, args.rounds, args.requests, on_level))
    log(format_notes(report))
    if args.json_path:
        write_json(report, args.json_path)
    if args.plot_path:
        log(plot({config.base_url: report["levels"]}, args.plot_path, f"{workload.name} workload"))
    return 1 if any(level["num_errors"] for level in report["levels"]) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py", description=DESCRIPTION, formatter_class=_Formatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
