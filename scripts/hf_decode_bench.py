#!/usr/bin/env python3
"""HF transformers (eager attention) decode throughput on a GPU, for scripts/gpu-check.sh.

Loads the same GGUF file waypoint serves (transformers dequantizes it to f32), then for each
stream count generates `--output-len` tokens after random `--input-len`-token prompts.
Decode throughput excludes the prefill: (time of prefill + N tokens) - (time of prefill + 1).

Needs torch with CUDA, transformers and gguf.
"""

import argparse
import os
import time

import torch
from transformers import AutoModelForCausalLM


def timed_generate(model, prompts, new_tokens):
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="GGUF file")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    args = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(args.model)),
        gguf_file=os.path.basename(args.model),
        torch_dtype=torch.float32,
        attn_implementation="eager",
    ).to(args.device)
    model.eval()
    vocab = model.config.vocab_size
    print("| streams | decode tok/s | decode step ms |")
    print("|---|---|---|")
    with torch.inference_mode():
        for streams in args.streams:
            generator = torch.Generator().manual_seed(streams)
            prompts = torch.randint(
                vocab // 10, vocab, (streams, args.input_len), generator=generator
            ).to(args.device)
            timed_generate(model, prompts, 2)  # warm-up: kernels, allocator
            prefill = timed_generate(model, prompts, 1)
            total = timed_generate(model, prompts, args.output_len + 1)
            step = (total - prefill) / args.output_len
            print(f"| {streams} | {streams / step:.1f} | {step * 1e3:.2f} |")


if __name__ == "__main__":
    main()
