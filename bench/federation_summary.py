#!/usr/bin/env python3
"""Summary of a bench/gpu_federation.sh run (standard library only).

  federation_summary.py memcpy [--mb 1024] [--out memcpy.json]
      single-thread memcpy bandwidth of this host (GB copied per second, best of 5)
  federation_summary.py summarize DIR [--json summary.json]
      a markdown table from DIR: metrics-<client>.jsonl, metrics-shard-<i>.jsonl,
      samples.tsv, memcpy.json, env.txt (as the script leaves them)

Per client, from its "update" records: the median of every *_s field (pull, train,
encode, push, commit and whatever else the client records), the cycle (time between
consecutive update records), compute utilisation = sum(train_s) / wall time between the
first and last update (the first update's own train_s left out: it happened before the
window), committed updates and tokens/s over that window. From the samples: GPU
utilisation (median, min, also inside the update window), host RAM peak, run-folder and
disk peaks. From the shards' "apply" records: apply ms and the apply rate (the shard's
fp32 slice, 4 bytes a value, over apply_ms) beside the host's memcpy rate.
"""
import argparse
import glob
import json
import os
import statistics
import sys
import time

PHASE_ORDER = ["pull_s", "train_s", "encode_s", "state_s", "wait_s", "push_s", "commit_s"]


def load_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a torn last line
    except OSError:
        pass
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec=".2f", none="–"):
    if x is None:
        return none
    return format(x, spec)


def gb(x):
    return None if x is None else x / 1e9


# ---- memcpy ---------------------------------------------------------------------------

def memcpy(mb, repeats=5):
    n = mb << 20
    src = bytearray(b"\x5a") * n          # real pages, not the shared zero page
    dst = bytearray(n)
    mv_dst, mv_src = memoryview(dst), memoryview(src)
    mv_dst[:] = mv_src                      # first touch of dst
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mv_dst[:] = mv_src
        times.append(time.perf_counter() - t)
    best = min(times)
    return {"bytes": n, "best_s": best, "median_s": statistics.median(times),
            "gb_per_s": n / best / 1e9, "threads": 1, "method": "memoryview slice copy (memcpy), best of %d" % repeats}


# ---- clients --------------------------------------------------------------------------

def client_summary(name, recs):
    start = next((r for r in recs if r.get("event") == "start"), None)
    ups = sorted((r for r in recs if r.get("event") == "update"), key=lambda r: r.get("time", 0))
    dropped = sum(1 for r in recs if r.get("event") == "update_dropped")
    s = {"name": name, "updates": len(ups), "dropped": dropped, "phases": {}}
    keys = set()
    for r in ups:
        keys.update(k for k, v in r.items() if k.endswith("_s") and "_per_" not in k
                    and isinstance(v, (int, float)) and not isinstance(v, bool))
    ordered = [k for k in PHASE_ORDER if k in keys] + sorted(keys - set(PHASE_ORDER))
    for k in ordered:
        vals = [r[k] for r in ups if isinstance(r.get(k), (int, float))]
        s["phases"][k] = {"median": med(vals), "sum": sum(vals), "n": len(vals)}
    times = [r["time"] for r in ups if "time" in r]
    cycles = [b - a for a, b in zip(times, times[1:])]
    s["cycle_s_median"] = med(cycles)
    s["cycle_s_min"] = min(cycles) if cycles else None
    s["cycle_s_max"] = max(cycles) if cycles else None
    s["first_update_time"] = times[0] if times else None
    s["last_update_time"] = times[-1] if times else None
    if start and times:
        s["startup_s"] = times[0] - start.get("time", times[0])  # start record -> first committed update
    if len(times) >= 2:
        window = times[-1] - times[0]
        later = ups[1:]
        train = sum(r.get("train_s", 0) for r in later)
        s["window_s"] = window
        s["compute_utilisation"] = train / window if window > 0 else None
        s["tokens_per_s"] = sum(r.get("tokens", 0) for r in later) / window if window > 0 else None
    s["tokens"] = sum(r.get("tokens", 0) for r in ups)
    s["train_tokens_per_s_median"] = med([r.get("tokens_per_s") for r in ups])
    s["staleness_median"] = med([r.get("staleness") for r in ups])
    s["bytes_sent_median"] = med([r.get("bytes_sent") for r in ups])
    s["bytes_fp32_median"] = med([r.get("bytes_fp32") for r in ups])
    s["train_loss_last"] = ups[-1].get("train_loss") if ups else None
    s["steps_per_update"] = med([r.get("steps") for r in ups])
    if any("pipelined" in r for r in ups):  # push of update n overlapped training of n+1
        s["pipelined"] = sum(1 for r in ups if r.get("pipelined"))
    return s


# ---- shards ---------------------------------------------------------------------------

def shard_summary(name, recs):
    st = next((r for r in reversed(recs) if r.get("event") == "shard_start"), None)
    elements = (st["slice_end"] - st["slice_begin"]) if st and "slice_end" in st else None
    applies = [r for r in recs if r.get("event") == "apply" and not r.get("skipped")]
    skipped = sum(1 for r in recs if r.get("event") == "apply" and r.get("skipped"))
    ms = [r["apply_ms"] for r in applies if isinstance(r.get("apply_ms"), (int, float))]
    s = {"name": name, "slice_elements": elements, "applied": len(applies), "skipped": skipped,
         "apply_ms_median": med(ms), "apply_ms_max": max(ms) if ms else None}
    if elements and ms:
        fp32 = elements * 4
        s["slice_fp32_bytes"] = fp32
        rates = [fp32 / (m / 1000) / 1e9 for m in ms if m > 0]
        s["apply_gb_per_s_median"] = med(rates)
        s["apply_gb_per_s_best"] = max(rates) if rates else None
    s["stage_write_ms_median"] = med([r.get("write_ms") for r in recs if r.get("event") == "stage"])
    cks = [r for r in recs if r.get("event") == "checkpoint"]
    s["checkpoints"] = len(cks)
    s["checkpoint_ms_median"] = med([r.get("ms") for r in cks])
    s["halted"] = [r.get("message") for r in recs if r.get("event") == "halt"]
    return s


# ---- samples --------------------------------------------------------------------------

def load_samples(path):
    rows = []
    try:
        with open(path) as f:
            head = f.readline().rstrip("\n").split("\t")
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != len(head):
                    continue
                row = {}
                for k, v in zip(head, parts):
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = None
                rows.append(row)
    except OSError:
        pass
    return rows


def sample_summary(rows, t_first, t_last):
    def col(k, rs=rows):
        return [r[k] for r in rs if r.get(k) is not None]
    s = {"samples": len(rows)}
    gpu = col("gpu_util_pct")
    if gpu:
        s["gpu_util_median"] = med(gpu)
        s["gpu_util_min"] = min(gpu)
        s["gpu_util_max"] = max(gpu)
    if t_first is not None and t_last is not None:
        inside = [r for r in rows if r.get("time") is not None and t_first <= r["time"] <= t_last]
        g = col("gpu_util_pct", inside)
        s["window_samples"] = len(inside)
        if g:
            s["gpu_util_window_median"] = med(g)
            s["gpu_util_window_min"] = min(g)
    mem = col("gpu_mem_mib")
    if mem:
        s["gpu_mem_mib_peak"] = max(mem)
    host = col("host_used_bytes")
    if host:
        s["host_used_bytes_first"] = host[0]
        s["host_used_bytes_peak"] = max(host)
    rss = col("fedps_rss_bytes")
    if rss:
        s["fedps_rss_bytes_peak"] = max(rss)
    for role in ("clients", "shards"):  # summed over the role's processes
        v = col(role + "_rss_bytes")
        if v:
            s[role + "_rss_bytes_peak"] = max(v)
    du = col("run_dir_bytes")
    if du:
        s["run_dir_bytes_peak"] = max(du)
        s["run_dir_bytes_last"] = du[-1]
    av = col("disk_avail_bytes")
    if av:
        s["disk_avail_bytes_min"] = min(av)
    return s


def read_env(path):
    env = {}
    try:
        for line in open(path):
            if ":" in line:
                k, v = line.split(":", 1)
                env[k.strip()] = v.strip()
    except OSError:
        pass
    return env


def read_config(path):
    try:
        import tomllib
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (ImportError, OSError, ValueError):
        return {}


def summarize(d):
    env = read_env(os.path.join(d, "env.txt"))
    cfg = read_config(os.path.join(d, "config.toml"))
    tr = cfg.get("train", {})
    for k in ("seq_len", "micro_batch", "grad_accum"):
        if k in tr:
            env[k] = str(tr[k])
    if cfg.get("compression", {}).get("codec"):
        env["codec"] = cfg["compression"]["codec"]
    clients, shards, evaluator = [], [], None
    for p in sorted(glob.glob(os.path.join(d, "metrics-*.jsonl"))):
        name = os.path.basename(p)[len("metrics-"):-len(".jsonl")]
        recs = load_jsonl(p)
        if name.startswith("shard-"):
            shards.append(shard_summary(name, recs))
        elif any(r.get("event") == "eval" for r in recs) or any(r.get("mode") == "evaluator" for r in recs):
            evals = [r for r in recs if r.get("event") == "eval"]  # the evaluator commits nothing
            evaluator = {"name": name, "evaluations": len(evals)}
            if evals:
                evaluator.update({k: evals[-1].get(k) for k in ("version", "loss", "perplexity", "federation_tokens")})
        else:
            clients.append(client_summary(name, recs))
    firsts = [c["first_update_time"] for c in clients if c.get("first_update_time")]
    lasts = [c["last_update_time"] for c in clients if c.get("last_update_time")]
    samples = sample_summary(load_samples(os.path.join(d, "samples.tsv")),
                             max(firsts) if firsts else None, min(lasts) if lasts else None)
    try:
        mc = json.load(open(os.path.join(d, "memcpy.json")))
    except (OSError, ValueError):
        mc = None
    total = {"updates": sum(c["updates"] for c in clients)}
    tps = [c.get("tokens_per_s") for c in clients if c.get("tokens_per_s")]
    total["tokens_per_s"] = sum(tps) if tps else None
    utils = [c.get("compute_utilisation") for c in clients if c.get("compute_utilisation") is not None]
    total["compute_utilisation_mean"] = statistics.mean(utils) if utils else None
    return {"env": env, "clients": clients, "shards": shards, "samples": samples, "memcpy": mc, "total": total,
            "evaluator": evaluator}


def markdown(s):
    env, out = s["env"], []
    w = out.append
    w(f"# fedps federation: {env.get('preset', '?')}, {env.get('clients', '?')} clients, {env.get('shards', '?')} shards,"
      f" H {env.get('local_steps', '?')}, micro-batch {env.get('micro_batch', '?')} x {env.get('seq_len', '?')} tokens,"
      f" codec {env.get('codec', 'bf16 (default)')}, {env.get('device', '?')}\n")
    w(f"{env.get('date_utc', '')} · rev {env.get('fedps_rev', '?')} · {env.get('seconds_run', '?')} s run"
      f" · {env.get('nproc', '?')} cores · {env.get('model name', '')}"
      + (f" · {env['set']}" if env.get("set") else "") + "\n")
    cl = s["clients"]
    phases = []
    for c in cl:
        for k in c["phases"]:
            if k not in phases:
                phases.append(k)
    phases = [k for k in PHASE_ORDER if k in phases] + [k for k in phases if k not in PHASE_ORDER]
    w("## Clients (medians over committed updates, seconds)\n")
    w("| client | updates | " + "".join(k[:-2] + " | " for k in phases) +
      "cycle | compute util. | tokens/s (window) | train tokens/s | staleness | sent MB | startup s |")
    w("|---|---:|" + "---:|" * len(phases) + "---:|---:|---:|---:|---:|---:|---:|")
    for c in cl:
        ph = "".join(" " + fmt(c["phases"].get(k, {}).get("median")) + " |" for k in phases)
        util = c.get("compute_utilisation")
        extra = (" (+%d dropped)" % c["dropped"] if c["dropped"] else "") + \
            (" (%d pipelined)" % c["pipelined"] if c.get("pipelined") else "")
        w(f"| {c['name']} | {c['updates']}{extra} |{ph}"
          f" {fmt(c.get('cycle_s_median'))} | {fmt(None if util is None else 100 * util, '.1f')}{'%' if util is not None else ''} |"
          f" {fmt(c.get('tokens_per_s'), ',.0f')} | {fmt(c.get('train_tokens_per_s_median'), ',.0f')} |"
          f" {fmt(c.get('staleness_median'), 'g')} | {fmt(None if c.get('bytes_sent_median') is None else c['bytes_sent_median'] / 1e6, '.1f')} |"
          f" {fmt(c.get('startup_s'), '.1f')} |")
    t = s["total"]
    w(f"\nAll clients: {t['updates']} committed updates, {fmt(t.get('tokens_per_s'), ',.0f')} tokens/s together,"
      f" mean compute utilisation {fmt(None if t.get('compute_utilisation_mean') is None else 100 * t['compute_utilisation_mean'], '.1f')}%"
      " (sum of train_s after the first update / wall time from the first to the last update).\n")
    ev = s.get("evaluator")
    if ev:
        w(f"Evaluator: {ev['evaluations']} evaluations" + (
            f", the last at version {ev.get('version')}: loss {fmt(ev.get('loss'), '.4f')},"
            f" {fmt(ev.get('federation_tokens'), ',')} federation tokens.\n" if ev["evaluations"] else ".\n"))
    sm = s["samples"]
    w("## Host and GPU samples\n")
    w("| samples | GPU util. median / min / max | in the update window median / min | GPU memory peak | host RAM used first / peak | fedps RSS peak (clients / shards) | run folder peak | disk free min |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|")
    w(f"| {sm.get('samples', 0)} | {fmt(sm.get('gpu_util_median'), 'g')} / {fmt(sm.get('gpu_util_min'), 'g')} / {fmt(sm.get('gpu_util_max'), 'g')} % |"
      f" {fmt(sm.get('gpu_util_window_median'), 'g')} / {fmt(sm.get('gpu_util_window_min'), 'g')} % ({sm.get('window_samples', 0)}) |"
      f" {fmt(None if sm.get('gpu_mem_mib_peak') is None else sm['gpu_mem_mib_peak'] / 1024, '.1f')} GiB |"
      f" {fmt(gb(sm.get('host_used_bytes_first')), '.1f')} / {fmt(gb(sm.get('host_used_bytes_peak')), '.1f')} GB |"
      f" {fmt(gb(sm.get('fedps_rss_bytes_peak')), '.1f')} GB ({fmt(gb(sm.get('clients_rss_bytes_peak')), '.1f')} /"
      f" {fmt(gb(sm.get('shards_rss_bytes_peak')), '.1f')} GB) | {fmt(gb(sm.get('run_dir_bytes_peak')), '.2f')} GB |"
      f" {fmt(gb(sm.get('disk_avail_bytes_min')), '.1f')} GB |")
    w("")
    mc = s["memcpy"]
    mc_rate = mc.get("gb_per_s") if mc else None
    w("## Shards\n")
    w("| shard | slice (fp32) | applied | apply ms median / max | apply GB/s median / best | memcpy GB/s (1 thread) | stage write ms | checkpoints (ms) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for sh in s["shards"]:
        w(f"| {sh['name']} | {fmt(gb(sh.get('slice_fp32_bytes')), '.3f')} GB | {sh['applied']}{' (+%d skipped)' % sh['skipped'] if sh['skipped'] else ''} |"
          f" {fmt(sh.get('apply_ms_median'), '.1f')} / {fmt(sh.get('apply_ms_max'), '.1f')} |"
          f" {fmt(sh.get('apply_gb_per_s_median'))} / {fmt(sh.get('apply_gb_per_s_best'))} | {fmt(mc_rate)} |"
          f" {fmt(sh.get('stage_write_ms_median'), '.1f')} | {sh['checkpoints']} ({fmt(sh.get('checkpoint_ms_median'), '.0f')}) |"
          + (f" halted: {'; '.join(sh['halted'])}" if sh["halted"] else ""))
    if mc:
        w(f"\nmemcpy: {mc['bytes'] >> 20} MiB, {mc['method']}: {mc['gb_per_s']:.2f} GB/s."
          " Apply GB/s = the shard's fp32 slice / apply_ms (reading the staged update, the outer"
          " optimizer step and publishing the snapshot).")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memcpy")
    m.add_argument("--mb", type=int, default=1024)
    m.add_argument("--out")
    s = sub.add_parser("summarize")
    s.add_argument("dir")
    s.add_argument("--json")
    a = ap.parse_args()
    if a.cmd == "memcpy":
        r = memcpy(a.mb)
        print(f"[memcpy] {a.mb} MiB: {r['gb_per_s']:.2f} GB/s (best of 5, 1 thread)", file=sys.stderr)
        if a.out:
            json.dump(r, open(a.out, "w"), indent=1)
        else:
            print(json.dumps(r))
        return
    summary = summarize(a.dir)
    if a.json:
        json.dump(summary, open(a.json, "w"), indent=1)
    sys.stdout.write(markdown(summary))


if __name__ == "__main__":
    main()
