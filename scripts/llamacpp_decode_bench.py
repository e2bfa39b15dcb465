#!/usr/bin/env python3
"""llama.cpp on the CPU, for docs/BENCHMARKS.md beside `waypoint`'s model_bench (issue 16).

Times, on the same GGUF file and thread count as ours, through llama-cpp-python:
one-stream greedy decode (tokens per second after the prompt) and a 512-token prefill.
Each figure is the best of three, as in examples/model_bench.rs.

llama.cpp is never a dependency of this repository; install it beside it:

    python3 -m venv ~/.cache/peers/lcp
    CMAKE_ARGS="-DGGML_NATIVE=ON" ~/.cache/peers/lcp/bin/pip install llama-cpp-python
    ~/.cache/peers/lcp/bin/python scripts/llamacpp_decode_bench.py [--model FILE] [--threads 2]
"""

import argparse
import os
import subprocess
import time
from pathlib import Path

from llama_cpp import Llama

ROOT = Path(__file__).resolve().parent.parent


def best_of(runs, measure):
    return min(measure() for _ in range(runs))


def decode_seconds_per_token(llm, prompt_ids, new_tokens):
    """Seconds per generated token after the prompt: (prompt + N) - (prompt + 1), over N - 1."""

    def generate(count):
        llm.reset()
        start = time.perf_counter()
        produced = 0
        for _ in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
            produced += 1
            if produced == count:
                break
        return time.perf_counter() - start

    return (best_of(3, lambda: generate(new_tokens)) - best_of(3, lambda: generate(1))) / (
        new_tokens - 1)


def prefill_seconds(llm, ids):
    def run():
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        return time.perf_counter() - start

    return best_of(3, run)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="GGUF file (default: SmolLM2 via scripts/fetch-smollm2.sh)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    model = args.model or subprocess.run([str(ROOT / "scripts/fetch-smollm2.sh")], check=True,
                                         capture_output=True, text=True).stdout.strip()
    llm = Llama(model_path=model, n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=2048, n_batch=512, verbose=False)
    prompt = llm.tokenize(b"Write a long story about a lighthouse keeper.")
    per_token = decode_seconds_per_token(llm, prompt, args.new_tokens)
    vocab = llm.n_vocab()
    # 512 tokens of ordinary text ids (not special ones), as model_bench's prefill.
    ids = [100 + (i * 7919) % (vocab - 200) for i in range(512)]
    prefill = prefill_seconds(llm, ids)
    print(f"model: {os.path.basename(model)}, threads: {args.threads}")
    print("| measure | llama.cpp |")
    print("|---|---|")
    print(f"| decode, 1 stream (prompt {len(prompt)} tokens, {args.new_tokens} new) "
          f"| {1 / per_token:.1f} tok/s |")
    print(f"| prefill, 512 tokens | {512 / prefill:.1f} tok/s |")


if __name__ == "__main__":
    main()
