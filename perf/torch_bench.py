#!/usr/bin/python3
"""
PyTorch training-speed baseline for moe.c: the same MoE transformer
(tests/oracle/model.py, which the oracle test holds to the C model's math)
trained in float32 with torch.optim.AdamW on random tokens.

  perf/torch_bench.py [--config FILE.yaml | --config-json FILE] [--num-layers 8 ...]
                      [--threads N] [--steps S] [--warmup W] [--device cpu|cuda]

Model flags use moe's names (--hidden-size, --moe-router-topk, ...); later
sources win: defaults (configs/small.yaml's model), the file, then flags.
A step is forward + backward + (clip) + AdamW step, one micro-batch per step.
Prints one JSON line on stdout:
  {"impl":"pytorch","tokens_per_s":..,"step_ms":..,"threads":..,"torch":"..", ...}
Progress goes to stderr.

Time it on an otherwise idle machine: torch's OpenMP threads (and the C
trainer's) spin-wait, and with other processes on the cores a 2-thread step
can be 10-20x slower than on a quiet one. OMP_WAIT_POLICY=passive tames that
for both implementations; the JSON line records the policy used.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "oracle"))


def _early_threads(argv):
    """--threads N, read before torch loads: Debian's torch does its GEMMs in
    OpenBLAS (the pthread build), whose pool size is fixed from the environment
    at load time and is not touched by torch.set_num_threads."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return None


_t = _early_threads(sys.argv[1:])
if _t and _t.isdigit() and int(_t) > 0:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = _t

import torch  # noqa: E402

from model import MoETransformer  # noqa: E402

# configs/small.yaml's model; the rest are moe's config defaults (runtime/base/config.c).
SMALL = {
    "num_layers": 8, "hidden_size": 512, "ffn_hidden_size": 2048, "num_attention_heads": 8,
    "num_query_groups": 8, "seq_length": 256, "vocab_size": 256, "num_experts": 8,
    "moe_router_topk": 2, "moe_ffn_hidden_size": 1024,
    "moe_shared_expert_intermediate_size": 0, "moe_layer_freq": "1",
    "score_function": "softmax", "norm_topk": 1, "aux_loss_coeff": 0.01, "z_loss_coeff": 0.001,
    "untie": 0, "enable_expert_bias": 0, "bias_update_rate": 1e-3, "rotary_base": 10000.0,
    "norm_epsilon": 1e-5, "init_method_std": 0.02, "capacity_factor": 0.0,
    "micro_batch_size": 4, "lr": 3e-3, "weight_decay": 0.1, "adam_beta1": 0.9,
    "adam_beta2": 0.95, "adam_eps": 1e-8, "clip_grad": 1.0, "seed": 1234,
}

# moe flag / YAML key -> key above (model.py's names where they differ).
ALIASES = {
    "moe-router-score-function": "score_function",
    "moe-router-norm-topk": "norm_topk",
    "moe-aux-loss-coeff": "aux_loss_coeff",
    "moe-z-loss-coeff": "z_loss_coeff",
    "untie-embeddings-and-output-weights": "untie",
    "moe-router-enable-expert-bias": "enable_expert_bias",
    "moe-router-bias-update-rate": "bias_update_rate",
    "moe-expert-capacity-factor": "capacity_factor",
}
for k in SMALL:
    ALIASES.setdefault(k.replace("_", "-"), k)


def convert(key, value):
    """Text (YAML scalar or flag) to the type SMALL holds for key."""
    ref = SMALL[key]
    if isinstance(value, str):
        v = value.strip().strip("'\"")
    else:
        return value
    if key == "moe_layer_freq" or key == "score_function":
        return v
    if isinstance(ref, int) and not isinstance(ref, bool):
        if v.lower() in ("true", "yes", "on"):
            return 1
        if v.lower() in ("false", "no", "off"):
            return 0
        return int(v)
    return float(v)


def load_yaml_flat(path):
    """The flat `key: value` YAML moe's configs use (comments, no nesting)."""
    out = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            if ":" not in line:
                raise SystemExit("%s:%d: expected `key: value`" % (path, lineno))
            k, v = line.split(":", 1)
            k = k.strip()
            if k in ALIASES:
                out[ALIASES[k]] = convert(ALIASES[k], v)
    return out


def layer_pattern(freq, num_layers):
    """moe-layer-freq: "1" all MoE, "k" every k-th from layer 0, "[0,1,...]" a pattern."""
    if isinstance(freq, (list, tuple)):
        pat = [int(x) for x in freq]
    else:
        s = str(freq).strip()
        if s.startswith("["):
            pat = [int(x) for x in s.strip("[]").split(",") if x.strip()]
        else:
            k = int(s)
            pat = [1 if i % k == 0 else 0 for i in range(num_layers)]
    if len(pat) != num_layers:
        raise SystemExit("moe-layer-freq %r gives %d layers, not %d" % (freq, len(pat),
                                                                         num_layers))
    return pat


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="flat YAML config (moe's keys)")
    ap.add_argument("--config-json", help="JSON object of model.py / moe keys")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    for flag, key in sorted(ALIASES.items()):
        ap.add_argument("--" + flag, dest=key, default=None)
    a = ap.parse_args(argv)

    cfg = dict(SMALL)
    if a.config:
        cfg.update(load_yaml_flat(a.config))
    if a.config_json:
        with open(a.config_json) as f:
            for k, v in json.load(f).items():
                k = ALIASES.get(k, k)
                if k in SMALL:
                    cfg[k] = convert(k, v)
                elif k == "moe_layer_is_moe":
                    cfg["moe_layer_freq"] = v
    for key in SMALL:
        v = getattr(a, key, None)
        if v is not None:
            cfg[key] = convert(key, v)
    if cfg["vocab_size"] <= 0:
        cfg["vocab_size"] = 256  # "from the data": the byte tokenizer's vocabulary
    cfg["moe_layer_is_moe"] = layer_pattern(cfg["moe_layer_freq"], cfg["num_layers"])
    if a.steps < 1 or a.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    return a, cfg


def main(argv):
    a, cfg = parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(cfg["seed"])
    dev = torch.device(a.device)
    model = MoETransformer(cfg, dtype=torch.float32, device=dev)
    model.init_weights(seed=cfg["seed"])
    params = [p for _, p in model.named_oracle_params()]
    decay = [p for n, p in model.named_oracle_params() if not n.endswith("norm.weight")]
    no_decay = [p for n, p in model.named_oracle_params() if n.endswith("norm.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=(cfg["adam_beta1"], cfg["adam_beta2"]),
                            eps=cfg["adam_eps"])

    B, T, V = cfg["micro_batch_size"], cfg["seq_length"], cfg["vocab_size"]
    gen = torch.Generator().manual_seed(cfg["seed"])
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        seq = torch.randint(0, V, (B, T + 1), generator=gen).to(dev)
        opt.zero_grad(set_to_none=True)
        obj, lm, aux, z = model(seq[:, :-1], seq[:, 1:], 1.0 / (B * T), 1.0)
        obj.backward()
        if cfg["clip_grad"] > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg["clip_grad"])
        opt.step()
        if cfg["enable_expert_bias"]:
            model.update_expert_bias(cfg["bias_update_rate"])
        return lm.item() / (B * T)

    for i in range(a.warmup):
        loss = step()
        print("warmup %d loss %.4f" % (i, loss), file=sys.stderr)
    times = []
    for i in range(a.steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
        print("step %d loss %.4f %.1f ms" % (i, loss, times[-1] * 1e3), file=sys.stderr)

    total = sum(times)
    nparams = sum(p.numel() for p in params)
    print(json.dumps({
        "impl": "pytorch",
        "tokens_per_s": B * T * a.steps / total,
        "step_ms": 1e3 * total / a.steps,
        "step_ms_median": 1e3 * statistics.median(times),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(dev),
        # libgomp spins before sleeping: on a loaded machine that swings
        # multi-thread timings by 10x, so say which policy the numbers had.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "steps": a.steps,
        "warmup": a.warmup,
        "tokens_per_step": B * T,
        "params": nparams,
        "final_loss": loss,
        "config": {k: cfg[k] for k in ("num_layers", "hidden_size", "num_attention_heads",
                                       "num_query_groups", "num_experts", "moe_router_topk",
                                       "moe_ffn_hidden_size", "seq_length",
                                       "micro_batch_size", "vocab_size")},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
