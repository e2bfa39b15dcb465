#!/usr/bin/env python3
"""Issue 16's targets, measured as interleaved rounds on this machine (docs/BENCHMARKS.md).

Each round runs, one after another on the same GGUF file and 2 threads: llama.cpp through
scripts/llamacpp_decode_bench.py, `model_bench --weights f32` built from the commit before
the quantized path ("f32 before"), and `model_bench` at the working tree (default weights).
It prints every round's figures and ratios, then each target's median and how many rounds met
it. Shared machines drift by a fifth within minutes, so a target is read from the medians of
several rounds, never from one.

    scripts/quant_rounds.py [--rounds 6] [--before 1d36788] [--model FILE]

llama.cpp is never a dependency of this repository; install it beside it (see
scripts/llamacpp_decode_bench.py). "f32 before" is built in a temporary git worktree with
this repository's target directory, so only the waypoint crate is compiled again.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_PYTHON = Path.home() / ".cache/peers/lcp/bin/python"
# (name, figure on our side, figure it is compared with, smallest ratio that meets the target)
TARGETS = [
    ("1 stream >= 1.2x llama.cpp", "ours_1", "llama_1", 1.2),
    ("32 streams >= 0.95x f32 before", "ours_32", "before_32", 0.95),
    ("prefill 512 >= 0.9x f32 before", "ours_prefill", "before_prefill", 0.9),
]


def output_of(command):
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"quant_rounds: {' '.join(command)} failed:\n{done.stderr}")
    return done.stdout


def build_model_bench(tree, target_dir, out):
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    subprocess.run(["cargo", "build", "--release", "--example", "model_bench"], cwd=tree,
                   env=env, check=True)
    shutil.copy(target_dir / "release/examples/model_bench", out)


def figure(pattern, text, what):
    match = re.search(pattern, text)
    if not match:
        sys.exit(f"quant_rounds: no {what} in this output:\n{text}")
    return float(match.group(1))


def model_bench(binary, model, *args):
    out = output_of([str(binary), *args, model])
    return {
        "1": figure(r"decode step, 1 stream .*?\(([\d.]+) tok/s\)", out, "one-stream figure"),
        "32": figure(r"decode, 32 streams \(ctx 128\) \| ([\d.]+) tok/s", out, "32-stream figure"),
        "prefill": figure(r"prefill, 512 tokens \| ([\d.]+) tok/s", out, "prefill figure"),
        "rss": figure(r"resident memory .*?\| (\d+) MB", out, "resident memory"),
        "pool": figure(r"resident memory \(weights \+ (\d+) MB KV pool\)", out, "KV pool"),
    }


def llama_cpp(model):
    out = output_of([str(LLAMA_PYTHON), str(ROOT / "scripts/llamacpp_decode_bench.py"),
                     "--model", model])
    return figure(r"decode, 1 stream .*?\| ([\d.]+) tok/s", out, "llama.cpp decode figure")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--before", default="1d36788", help="commit of the f32 baseline")
    parser.add_argument("--model", help="GGUF file (default: SmolLM2 via scripts/fetch-smollm2.sh)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.model and not os.path.isfile(args.model):
        parser.error(f"--model {args.model}: no such file")
    if not LLAMA_PYTHON.exists():
        sys.exit(f"quant_rounds: no llama.cpp at {LLAMA_PYTHON}; install it as "
                 "scripts/llamacpp_decode_bench.py says")
    model = args.model or subprocess.run([str(ROOT / "scripts/fetch-smollm2.sh")], check=True,
                                         capture_output=True, text=True).stdout.strip()
    file_mb = os.path.getsize(model) / 1e6
    target_dir = ROOT / "target"
    with tempfile.TemporaryDirectory(prefix="quant-rounds-") as tmp:
        tmp = Path(tmp)
        ours, before = tmp / "model_bench_ours", tmp / "model_bench_before"
        worktree = tmp / "before"
        added = subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before],
                               cwd=ROOT, capture_output=True, text=True)
        if added.returncode != 0:
            sys.exit(f"quant_rounds: no worktree at --before {args.before}:\n{added.stderr}")
        try:
            build_model_bench(worktree, target_dir, before)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT,
                           check=True)
        # Ours last, so that target/ is left holding the working tree's build.
        build_model_bench(ROOT, target_dir, ours)
        rounds = []
        print("| round | llama.cpp 1 stream | f32 before 1 / 32 / prefill | ours 1 / 32 / prefill "
              "| ours RSS | " + " | ".join(name for name, *_ in TARGETS) + " |")
        print("|---" * (5 + len(TARGETS)) + "|")
        for i in range(args.rounds):
            r = {"llama_1": llama_cpp(model)}
            r.update({f"before_{k}": v for k, v in model_bench(before, model, "--weights",
                                                              "f32").items()})
            r.update({f"ours_{k}": v for k, v in model_bench(ours, model).items()})
            rounds.append(r)
            ratios = " | ".join(f"{r[a] / r[b]:.2f}" for _, a, b, _ in TARGETS)
            print(f"| {i + 1} | {r['llama_1']:.1f} | {r['before_1']:.1f} / {r['before_32']:.1f}"
                  f" / {r['before_prefill']:.1f} | {r['ours_1']:.1f} / {r['ours_32']:.1f} / "
                  f"{r['ours_prefill']:.1f} | {r['ours_rss']:.0f} MB | {ratios} |", flush=True)
    print()
    for name, a, b, least in TARGETS:
        ratios = [r[a] / r[b] for r in rounds]
        met = sum(x >= least for x in ratios)
        print(f"{name}: median {statistics.median(ratios):.2f} (range {min(ratios):.2f}-"
              f"{max(ratios):.2f}), met in {met} of {len(ratios)} rounds")
    pool_mb = rounds[0]["ours_pool"]
    rss_limit = 1.3 * file_mb + pool_mb
    worst = max(r["ours_rss"] for r in rounds)
    print(f"RSS <= 1.3 x {file_mb:.1f} + {pool_mb:.0f} (KV pool) = {rss_limit:.0f} MB: largest "
          f"{worst:.0f} MB,"
          f" met in {sum(r['ours_rss'] <= rss_limit for r in rounds)} of {len(rounds)} rounds")


if __name__ == "__main__":
    main()
