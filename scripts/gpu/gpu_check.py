"""Device-only check of CUDA offload through `localllm serve` (run it on the GPU machine).

    python3 scripts/gpu/gpu_check.py --model /tmp/gpuwork/llama8b-q4_k_m.gguf --out-dir /tmp/gpuwork/results

1. full offload: `--n-gpu-layers auto` with the whole GPU free must put every layer
   on the GPU (llama.cpp's own "offloaded N/N layers", output layer included), answer
   a 128-token completion, and `/v1/stats` `host.gpus` must agree with `nvidia-smi`
   (name, total and used memory within --tolerance-mib);
2. partial offload: the same under `LOCALLLM_VRAM_BUDGET_MIB` (default 3072): the
   memory plan must pick 0 < layers < all, the server must answer, and the GPU memory
   it takes must stay near the budget (no out-of-memory).
Writes gpu_check.json and the two server logs into --out-dir; exits 1 if a check fails.
`--allow-no-gpu` runs the same flow on a CPU-only machine (for testing this script).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MIB = 2**20


def http_json(url: str, body: dict | None = None, timeout: float = 300) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def nvidia_smi() -> list[dict]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total,utilization.gpu",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        index, name, used, total, util = [x.strip() for x in line.split(",")]
        rows.append({"index": int(index), "name": name, "memory_used_mib": int(used),
                     "memory_total_mib": int(total), "utilization_percent": int(util)})
    return rows


def nvml_v2_used_mib() -> int | None:
    """Used memory by NVML's v2 query (what nvidia-smi prints: reserved memory excluded)."""
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        return int(info.used) // MIB
    except Exception:
        return None


class Server:
    """`localllm serve` in a child process whose log goes to a file."""

    def __init__(self, args: argparse.Namespace, name: str, env_extra: dict[str, str]) -> None:
        self.log_path = Path(args.out_dir) / f"gpu_check_{name}.log"
        self.url = f"http://127.0.0.1:{args.port}"
        env = {**os.environ, **env_extra}
        command = [sys.executable, "-m", "localllm.cli", "serve", "--model", args.model, "--port", str(args.port),
                   "--parallel", str(args.parallel), "--ctx", str(args.ctx), "--log-level", "debug"]
        self.log = open(self.log_path, "w")
        # cwd: the localllm under test (python -m puts the cwd first on sys.path).
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        cwd=args.localllm_root)
        self.load_s = self._wait_ready(args.load_timeout_s)

    def _wait_ready(self, timeout_s: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log_path}")
            try:
                # /ready answers 200 once the default model serves (/v1/models answers at once).
                with urllib.request.urlopen(self.url + "/ready", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.25)
        raise RuntimeError(f"server not ready after {timeout_s} s; see {self.log_path}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            rc = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            rc = self.process.wait()
        self.log.close()
        return rc

    def planned_layers(self) -> int | None:
        match = re.search(r"GPU layers:\s+(\d+)", self.log_path.read_text())
        return int(match.group(1)) if match else None

    def offloaded_layers(self) -> tuple[int, int] | None:
        """llama.cpp's own count (debug log): 'offloaded N/M layers to GPU', M = blocks + output."""
        match = re.search(r"offloaded (\d+)/(\d+) layers to GPU", self.log_path.read_text())
        return (int(match.group(1)), int(match.group(2))) if match else None

    def complete(self, max_tokens: int) -> dict:
        started = time.perf_counter()
        answer = http_json(self.url + "/v1/completions", {
            "prompt": "The history of the lighthouse begins", "max_tokens": max_tokens,
            "temperature": 0.8, "ignore_eos": True})
        elapsed = time.perf_counter() - started
        tokens = answer["usage"]["completion_tokens"]
        return {"completion_tokens": tokens, "elapsed_s": round(elapsed, 3),
                "tokens_per_s_incl_prefill": round(tokens / elapsed, 1),
                "finish_reason": answer["choices"][0]["finish_reason"]}


def layer_count(model: str) -> int:
    from localllm.models.gguf import read_gguf
    return read_gguf(Path(model)).block_count


def telemetry_match(stats: dict, smi: list[dict], tolerance_mib: int) -> dict:
    gpus = stats.get("host", {}).get("gpus", [])
    if not gpus or not smi:
        return {"ok": False, "reason": "no GPUs in /v1/stats or nvidia-smi", "stats_gpus": gpus, "nvidia_smi": smi}
    ours, ref = gpus[0], smi[0]
    used_mib = ours["memory_used_bytes"] / MIB
    total_mib = ours["memory_total_bytes"] / MIB
    result = {
        "stats_gpu": ours, "nvidia_smi": ref, "nvml_v2_used_mib": nvml_v2_used_mib(),
        "name_match": ours["name"] == ref["name"],
        "total_diff_mib": round(total_mib - ref["memory_total_mib"], 1),
        "used_diff_mib": round(used_mib - ref["memory_used_mib"], 1),
    }
    result["ok"] = (len(gpus) == len(smi) and result["name_match"] and abs(result["total_diff_mib"]) <= 1
                    and abs(result["used_diff_mib"]) <= tolerance_mib)
    return result


def run_phase(args: argparse.Namespace, name: str, env_extra: dict[str, str], num_layers: int) -> dict:
    before = nvidia_smi()
    phase: dict = {"env": env_extra, "nvidia_smi_before": before}
    server = Server(args, name, env_extra)
    try:
        phase["load_s"] = round(server.load_s, 1)
        phase["planned_gpu_layers"] = server.planned_layers()
        phase["llama_cpp_offloaded"] = server.offloaded_layers()
        phase["completion"] = server.complete(args.max_tokens)
        time.sleep(0.5)  # let the GPU go idle so both readings see the same memory
        stats = http_json(server.url + "/v1/stats")
        smi = nvidia_smi()
        phase["nvidia_smi_loaded"] = smi
        phase["telemetry"] = telemetry_match(stats, smi, args.tolerance_mib)
        if before and smi:
            phase["server_gpu_mib"] = smi[0]["memory_used_mib"] - before[0]["memory_used_mib"]
    finally:
        phase["exit_code"] = server.stop()
    layers = phase["planned_gpu_layers"]
    served = phase["completion"]["completion_tokens"] == args.max_tokens
    if name == "full":
        # Every block AND the output layer on the GPU, as llama.cpp reports it (-ngl all = blocks + 1).
        offloaded = phase["llama_cpp_offloaded"]
        phase["all_offloaded"] = offloaded is not None and offloaded[0] == offloaded[1]
        phase["ok"] = served and layers is not None and layers >= num_layers and (
            args.allow_no_gpu or (phase["all_offloaded"] and phase["telemetry"]["ok"]))
    else:
        budget = int(env_extra["LOCALLLM_VRAM_BUDGET_MIB"])
        within = "server_gpu_mib" not in phase or phase["server_gpu_mib"] <= budget + args.context_overhead_mib
        phase["budget_mib"] = budget
        phase["within_budget_plus_cuda_context"] = within
        phase["ok"] = served and layers is not None and (args.allow_no_gpu or 0 < layers < num_layers) and within
    return phase


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out-dir", default=".")
    parser.add_argument("--port", type=int, default=18100)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--budget-mib", type=int, default=3072, help="VRAM budget for the partial-offload phase")
    parser.add_argument("--tolerance-mib", type=int, default=64, help="/v1/stats vs nvidia-smi used memory")
    parser.add_argument("--context-overhead-mib", type=int, default=1024,
                        help="CUDA context and cuBLAS workspace, outside the plan's budget")
    parser.add_argument("--load-timeout-s", type=float, default=300)
    parser.add_argument("--localllm-root", default=str(Path(__file__).resolve().parents[2]),
                        help="folder holding the localllm package under test")
    parser.add_argument("--allow-no-gpu", action="store_true")
    args = parser.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, args.localllm_root)
    num_layers = layer_count(args.model)
    report = {"model": args.model, "model_bytes": os.path.getsize(args.model), "num_layers": num_layers}
    for name, env in (("full", {}), ("partial", {"LOCALLLM_VRAM_BUDGET_MIB": str(args.budget_mib)})):
        try:
            report[name] = run_phase(args, name, env, num_layers)
        except Exception as exc:  # a failed phase is a result too; go on to the next
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {json.dumps(report[name])}", flush=True)
    report["ok"] = all(report[name].get("ok") for name in ("full", "partial"))
    Path(args.out_dir, "gpu_check.json").write_text(json.dumps(report, indent=1))
    print("gpu_check:", "PASS" if report["ok"] else "FAIL")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
