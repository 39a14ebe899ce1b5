"""Loads the bundled model with the installed llama-cpp-python and decodes a token.

Run by scripts/install.sh in a subprocess; a build for the wrong CPU dies here
with SIGILL instead of in the server. With LOCALLLM_REQUIRE_RPC=1 it also fails
when llama.cpp lacks the RPC backend (a wheel cached before GGML_RPC=ON was set:
pip's cache ignores CMAKE_ARGS).
"""
from __future__ import annotations

import os
import subprocess
import sys

CHECK = """
import os
from localllm.config import Config
from localllm.engine.llama_backend import BackendConfig, LlamaBackend
from localllm.models.registry import load_catalogue
from localllm.models.store import ModelStore
config = Config.load()
path, _ = ModelStore(config.data_dir, load_catalogue()).resolve("gemma3-270m")
backend = LlamaBackend(BackendConfig(path, num_ctx=256, num_seq=1, num_batch=64, num_threads=config.engine.num_threads))
logits = backend.logits_for(backend.tokenize("The capital of France is"))
assert logits.shape[0] > 0 and abs(float(logits[-1].max())) < 1e6
backend.close()
print("smoke test: the bundled model loaded and decoded")
if os.environ.get("LOCALLLM_REQUIRE_RPC") == "1":
    from localllm.engine.llama_backend.rpc import rpc_available
    assert rpc_available(), "llama.cpp was built without the RPC backend (GGML_RPC=OFF)"
    print("smoke test: the RPC backend is there")
"""


def main() -> int:
    result = subprocess.run([sys.executable, "-c", CHECK])
    if result.returncode != 0:
        print(f"smoke test failed (exit code {result.returncode})", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
