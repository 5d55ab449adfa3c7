#!/usr/bin/env python3
"""Hugging Face baseline for fedps's trainer: tokens/s and MFU of a training step.

Builds transformers' LlamaForCausalLM with the shape of a fedps preset (model/presets.cc:
Llama blocks, SwiGLU width 8/3 d rounded up to 64, multi-head attention, untied embeddings,
rope_theta 10000, RMSNorm eps 1e-5) and times full training steps the way fedps's trainer
runs them: fp32 master weights, bf16 autocast, SDPA attention, loss, backward, global
gradient-norm clipping at 1.0, fused AdamW (betas 0.9/0.95, weight decay 0.1). Inputs are
random tokens (a few pre-drawn batches, rotated). Warm-up steps (and torch.compile's
compilation) are excluded; each timed step is bracketed by CUDA events and the median is
reported.

  python3 bench/hf_llama_baseline.py --preset 125m --vocab 32000 --seq 2048 --batch 16 \
      --modes eager,compile --json hf.json

MFU = tokens/s x FLOPs per token / 989e12 (H100/H200 dense bf16), with FLOPs per token
given two ways (both printed):
  fedps   6 x (parameters - input embedding) + 12 x layers x d_model x seq
          (model/trainer.cc FlopsPerToken, what `fedps-ctl train` prints)
  all     6 x (all parameters) + 12 x layers x d_model x seq  (shared/BENCHMARKS.md)
Prints a short table last and writes every number to --json.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch

PEAK_FLOPS = 989e12

# (d_model, layers, heads, kv_heads) from model/presets.cc; ffn = roundup(8d/3, 64).
PRESETS = {
    "20m": (384, 8, 6, 6),
    "125m": (768, 12, 12, 12),
    "350m": (1024, 24, 16, 16),
    "1.3b": (2048, 24, 16, 16),
}


def swiglu_hidden(d, multiple=64):
    # presets.cc: RoundUp((8 * d + 2) / 3, multiple)
    x = (8 * d + 2) // 3
    return (x + multiple - 1) // multiple * multiple


def build_model(preset, vocab, seq, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    d, layers, heads, kv = PRESETS[preset]
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=swiglu_hidden(d),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=max(seq, 2048),
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device=device, dtype=torch.float32)
    model.train()
    return model, cfg


def rope_theta_of(cfg):
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return rp.get("rope_theta", getattr(cfg, "rope_theta", None))


def run_mode(mode, args, device):
    model, cfg = build_model(args.preset, args.vocab, args.seq, device)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    use_cuda = device.type == "cuda"
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=use_cuda)
    fwd = torch.compile(model) if mode == "compile" else model

    g = torch.Generator(device="cpu").manual_seed(1)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device) for _ in range(4)]
    params = list(model.parameters())

    def step(x):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_cuda):
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=use_cuda)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for i in range(args.warmup):
        loss = step(batches[i % len(batches)])
    if use_cuda:
        torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    first_loss = float(loss.detach())

    times = []
    for i in range(args.steps):
        x = batches[i % len(batches)]
        if use_cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            loss = step(x)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            s = time.perf_counter()
            loss = step(x)
            times.append(time.perf_counter() - s)
    last_loss = float(loss.detach())
    med = statistics.median(times)
    tokens = args.batch * args.seq
    tps = tokens / med
    attn = 12.0 * cfg.num_hidden_layers * cfg.hidden_size * args.seq
    f_fedps = 6.0 * (n_params - n_embed) + attn
    f_all = 6.0 * n_params + attn
    res = {
        "mode": mode,
        "params": n_params,
        "input_embedding": n_embed,
        "tokens_per_step": tokens,
        "warmup_steps": args.warmup,
        "warmup_s": warm_s,
        "timed_steps": args.steps,
        "step_s_median": med,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "step_s_all": times,
        "tokens_per_s": tps,
        "flops_per_token_fedps": f_fedps,
        "flops_per_token_all": f_all,
        "mfu_fedps": tps * f_fedps / PEAK_FLOPS,
        "mfu_all": tps * f_all / PEAK_FLOPS,
        "loss_after_warmup": first_loss,
        "loss_last": last_loss,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if use_cuda else None,
        "attn_implementation": model.config._attn_implementation,
        "rope_theta": rope_theta_of(cfg),
    }
    print(f"[hf] {mode}: {n_params:,} params, median step {med*1e3:.1f} ms "
          f"(min {min(times)*1e3:.1f}, max {max(times)*1e3:.1f}), {tps:,.0f} tok/s, "
          f"MFU {res['mfu_fedps']:.3f} (fedps formula) / {res['mfu_all']:.3f} (all weights), "
          f"warm-up {warm_s:.1f} s, loss {first_loss:.3f} -> {last_loss:.3f}", flush=True)
    del fwd, model, opt, batches
    if use_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="125m", choices=sorted(PRESETS))
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation included)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--modes", default="eager,compile", help="comma-separated: eager, compile")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default="", help="write all results here")
    args = ap.parse_args()

    import transformers
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": args.preset, "vocab": args.vocab, "seq": args.seq, "batch": args.batch,
        "argv": sys.argv,
    }
    print(f"[hf] torch {info['torch']} CUDA {info['cuda']} transformers {info['transformers']} "
          f"on {info['device_name']}", flush=True)
    results = []
    for mode in [m for m in args.modes.split(",") if m]:
        try:
            results.append(run_mode(mode, args, device))
        except Exception as e:  # report and go on: one failed mode must not hide the other
            print(f"[hf] {mode} failed: {type(e).__name__}: {e}", flush=True)
            results.append({"mode": mode, "error": f"{type(e).__name__}: {e}"})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=1)
    print(f"\nHF LlamaForCausalLM {args.preset}, vocab {args.vocab}, batch {args.batch} x {args.seq}, "
          f"{info['device_name']}")
    print(f"{'mode':8} {'median ms':>10} {'tokens/s':>10} {'MFU fedps':>10} {'MFU all':>8}")
    for r in results:
        if "error" in r:
            print(f"{r['mode']:8} failed: {r['error'][:60]}")
        else:
            print(f"{r['mode']:8} {r['step_s_median']*1e3:10.1f} {r['tokens_per_s']:10,.0f} "
                  f"{r['mfu_fedps']:10.3f} {r['mfu_all']:8.3f}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
