"""Device-to-device copy bandwidth through PyTorch (GPU machine only): the memory
bandwidth that bounds single-stream decode (every weight is read once per token).

    python3 scripts/gpu/copy_bandwidth.py [--gib 4] [--out bandwidth.json]

Reports bytes read + bytes written per second (the HBM traffic a copy makes), the
median of `--iters` timed copies after warm-up, timed with CUDA events.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gib", type=float, default=4.0, help="size of each buffer")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    num_bytes = int(args.gib * 2**30)
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times_ms = []
    for _ in range(args.iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times_ms.append(start.elapsed_time(end))
    median_ms = statistics.median(times_ms)
    result = {
        "device": torch.cuda.get_device_name(0),
        "buffer_bytes": num_bytes,
        "median_ms": round(median_ms, 3),
        "read_plus_write_gb_per_s": round(2 * num_bytes / (median_ms / 1e3) / 1e9, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
