#!/usr/bin/python3
"""
Whole-model oracle: compares moe.c's loss and gradients with the PyTorch
reference (model.py) in float64 on the same weights and batch.

  check.py DUMP            compare a dump written by tests/unit/test_oracle.c
  check.py --selftest      check model.py against a plain-loop reading of
                           runtime/model.h and layers/*.h (no C involved)

Exit: 0 all within tolerance, 1 a mismatch (named), 2 bad usage or dump,
77 torch is not available (printed as SKIP).
Dump format: see tests/oracle/README.md.
"""
import json
import math
import os
import struct
import sys

try:
    import numpy as np
    import torch
except Exception as e:  # ImportError, or a broken install
    print("SKIP: torch not available (%s)" % e)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import MoETransformer  # noqa: E402

MAGIC = b"MOEORCL1"
TOL = 1e-5
CONFIG_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
               "num_query_groups", "seq_length", "vocab_size", "num_experts",
               "moe_router_topk", "moe_ffn_hidden_size",
               "moe_shared_expert_intermediate_size", "moe_layer_is_moe", "score_function",
               "norm_topk", "aux_loss_coeff", "z_loss_coeff", "untie", "enable_expert_bias",
               "rotary_base", "norm_epsilon", "capacity_factor")


class DumpError(Exception):
    pass


def read_dump(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 12 or data[:8] != MAGIC:
        raise DumpError("%s: not an oracle dump (magic %r)" % (path, data[:8]))
    (L,) = struct.unpack("<I", data[8:12])
    if 12 + L > len(data):
        raise DumpError("%s: JSON header of %d bytes runs past the end" % (path, L))
    meta = json.loads(data[12:12 + L].decode("utf-8"))
    B, T = int(meta["B"]), int(meta["T"])
    # The C buffer may pad tensors for alignment: its length is num_params.
    nparam = int(meta.get("num_params", sum(int(np.prod(t["shape"])) for t in meta["tensors"])))
    need = 12 + L + 4 * (2 * nparam + 2 * B * T)
    if len(data) != need:
        raise DumpError("%s: %d bytes, expected %d for %d params and B*T=%d"
                        % (path, len(data), need, nparam, B * T))
    off = 12 + L
    params = np.frombuffer(data, dtype="<f4", count=nparam, offset=off)
    off += 4 * nparam
    inputs = np.frombuffer(data, dtype="<i4", count=B * T, offset=off).reshape(B, T)
    off += 4 * B * T
    targets = np.frombuffer(data, dtype="<i4", count=B * T, offset=off).reshape(B, T)
    off += 4 * B * T
    grads = np.frombuffer(data, dtype="<f4", count=nparam, offset=off)
    return meta, params, inputs, targets, grads


def slices(meta, flat):
    out = {}
    for t in meta["tensors"]:
        n = int(np.prod(t["shape"]))
        o = int(t["offset"])
        if o < 0 or o + n > flat.size:
            raise DumpError("tensor %s [%d, %d) is outside the %d floats"
                            % (t["name"], o, o + n, flat.size))
        out[t["name"]] = flat[o:o + n].reshape(t["shape"])
    return out


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def compare(path):
    meta, params, inputs, targets, grads = read_dump(path)
    cfg = {k: meta[k] for k in CONFIG_KEYS if k in meta}
    model = MoETransformer(cfg, dtype=torch.float64)

    want = dict(model.table)
    got = {t["name"]: tuple(t["shape"]) for t in meta["tensors"]}
    problems = []
    for name in sorted(set(want) | set(got)):
        if name not in got:
            problems.append("C table lacks %s %s" % (name, want[name]))
        elif name not in want:
            problems.append("C table has unexpected %s %s" % (name, got[name]))
        elif tuple(want[name]) != got[name]:
            problems.append("%s: C shape %s, reference %s" % (name, got[name], want[name]))
    if problems:
        for p in problems:
            print("FAIL table: " + p)
        return 1

    pc, gc = slices(meta, params), slices(meta, grads)
    with torch.no_grad():
        for name, p in model.named_oracle_params():
            p.copy_(torch.from_numpy(pc[name].astype(np.float64)))
        bias = meta.get("expert_bias") or []
        if bias:
            model.expert_bias.copy_(torch.tensor(bias, dtype=torch.float64))

    inp = torch.from_numpy(inputs.astype(np.int64))
    tgt = torch.from_numpy(targets.astype(np.int64))
    obj, lm, aux, z = model(inp, tgt, float(meta["lm_scale"]), float(meta["aux_scale"]))
    obj.backward()

    c = model.cfg
    print("config: L=%d C=%d heads=%d/%d E=%d K=%d %s norm_topk=%d shared=%d untie=%d "
          "bias=%d moe=%s B=%d T=%d V=%d"
          % (c["num_layers"], c["hidden_size"], c["num_attention_heads"],
             c["num_query_groups"], c["num_experts"], c["moe_router_topk"],
             c["score_function"], c["norm_topk"], c["moe_shared_expert_intermediate_size"],
             c["untie"], c["enable_expert_bias"], c["moe_layer_is_moe"], inputs.shape[0],
             inputs.shape[1], c["vocab_size"]))
    if math.isfinite(model.last_route_margin):
        print("smallest top-k selection margin (k-th minus (k+1)-th): %.3e%s"
              % (model.last_route_margin,
                 "  <- near tie: fp32 C may route differently" if model.last_route_margin < 1e-5
                 else ""))
    if model.last_route_ties:
        print("exact selection ties at the top-k boundary: %d (token, layer) pairs, "
              "resolved to the lower expert index" % model.last_route_ties)

    fails = []
    print("%-34s %14s %14s %10s" % ("scalar", "C", "torch", "rel err"))
    for key, t in (("objective", obj), ("lm_loss_sum", lm), ("aux_sum", aux), ("z_sum", z)):
        cv, tv = float(meta["c_" + key]), float(t.item())
        r = rel(cv, tv)
        bad = not (r <= TOL)
        if bad:
            fails.append(key)
        print("%-34s %14.8g %14.8g %10.2e%s" % (key, cv, tv, r, "  FAIL" if bad else ""))

    print("%-34s %10s %10s %10s" % ("gradient", "rel err", "max abs", "|g_torch|"))
    for name, p in model.named_oracle_params():
        gt = p.grad if p.grad is not None else torch.zeros_like(p)
        gcn = torch.from_numpy(gc[name].astype(np.float64))
        diff = gcn - gt
        nt = gt.norm().item()
        r = diff.norm().item() / max(nt, 1e-12)
        mx = diff.abs().max().item()
        bad = not (r <= TOL)
        if bad:
            fails.append(name)
        print("%-34s %10.2e %10.2e %10.3e%s" % (name, r, mx, nt, "  FAIL" if bad else ""))

    if fails:
        print("FAIL: %d of %d checks exceed rel err %.0e: %s"
              % (len(fails), 4 + len(model.table), TOL, ", ".join(fails)))
        return 1
    print("PASS: objective, losses and %d gradients within rel err %.0e"
          % (len(model.table), TOL))
    return 0


# ---------------------------------------------------------------------------
# Self-test: model.py against a second, deliberately plain reading of the
# headers (per-token loops, every expert evaluated densely and masked, kv heads
# copied), so a misreading in the vectorised code shows up as a difference.

def naive_forward(model, inputs, targets, lm_scale, aux_scale):
    c = model.cfg
    W = model.w
    B, T = inputs.shape
    C, NH, NKV = c["hidden_size"], c["num_attention_heads"], c["num_query_groups"]
    HD = C // NH
    E, K = c["num_experts"], c["moe_router_topk"]
    eps = c["norm_epsilon"]

    def norm(x, w):  # rmsnorm.h, one row
        return x / torch.sqrt((x * x).sum() / x.numel() + eps) * w

    def mlp(x, w13, w2):  # swiglu.h
        h = w13 @ x
        Fh = h.numel() // 2
        g, u = h[:Fh], h[Fh:]
        return w2 @ (g * torch.sigmoid(g) * u)

    def rot(v, t):  # rope.h
        out = v.clone()
        for i in range(HD // 2):
            a = t * c["rotary_base"] ** (-2.0 * i / HD)
            cs, sn = math.cos(a), math.sin(a)
            out[i] = v[i] * cs - v[i + HD // 2] * sn
            out[i + HD // 2] = v[i + HD // 2] * cs + v[i] * sn
        return out

    x = [[W("embedding.weight")[inputs[b, t]] for t in range(T)] for b in range(B)]
    aux_sum, z_sum, mi = 0.0, 0.0, 0
    for l in range(c["num_layers"]):
        p = "layers.%d." % l
        qkv = [[(W(p + "attn.qkv.weight") @ norm(x[b][t], W(p + "attn_norm.weight")))
                .view(NH + 2 * NKV, HD) for t in range(T)] for b in range(B)]
        for b in range(B):
            heads = []
            for h in range(NH):
                kv = h // (NH // NKV)
                q = [rot(qkv[b][t][h], t) for t in range(T)]
                k = [rot(qkv[b][t][NH + kv], t) for t in range(T)]
                v = [qkv[b][t][NH + NKV + kv] for t in range(T)]
                outs = []
                for t in range(T):
                    s = torch.stack([q[t] @ k[j] / math.sqrt(HD) for j in range(t + 1)])
                    a = torch.exp(s - s.max())
                    a = a / a.sum()
                    outs.append(sum(a[j] * v[j] for j in range(t + 1)))
                heads.append(outs)
            for t in range(T):
                y = torch.cat([heads[h][t] for h in range(NH)])
                x[b][t] = x[b][t] + W(p + "attn.out.weight") @ y
        hs = [norm(x[b][t], W(p + "ffn_norm.weight")) for b in range(B) for t in range(T)]
        N = len(hs)
        if c["moe_layer_is_moe"][l]:
            bias = model.expert_bias[mi] if c["enable_expert_bias"] else torch.zeros(E)
            counts = [0] * E
            psum = [0.0] * E
            outs = []
            for h in hs:
                lg = W(p + "moe.router.weight") @ h
                if c["score_function"] == "softmax":
                    sc = torch.exp(lg - lg.max())
                    sc = sc / sc.sum()
                    pr = sc
                else:
                    sc = 1.0 / (1.0 + torch.exp(-lg))
                    pr = sc / sc.sum()
                sel = (sc + bias).tolist()
                chosen = []
                for _ in range(K):  # largest, ties to the lower index
                    best = None
                    for e in range(E):
                        if e not in chosen and (best is None or sel[e] > sel[best]):
                            best = e
                    chosen.append(best)
                wsum = sum(sc[e] for e in chosen)
                out = torch.zeros(C, dtype=h.dtype)
                for e in range(E):
                    if e in chosen:
                        wk = sc[e] / wsum if c["norm_topk"] else sc[e]
                        out = out + wk * mlp(h, W(p + "moe.experts.w13")[e],
                                             W(p + "moe.experts.w2")[e])
                        counts[e] += 1
                    psum[e] = psum[e] + pr[e]
                if c["moe_shared_expert_intermediate_size"] > 0:
                    out = out + mlp(h, W(p + "moe.shared.w13"), W(p + "moe.shared.w2"))
                outs.append(out)
                m = lg.max()
                z_sum = z_sum + (m + torch.log(torch.exp(lg - m).sum())) ** 2 / N
            aux_sum = aux_sum + E / (K * N * N) * sum(counts[e] * psum[e] for e in range(E))
            mi += 1
        else:
            outs = [mlp(h, W(p + "mlp.w13"), W(p + "mlp.w2")) for h in hs]
        for b in range(B):
            for t in range(T):
                x[b][t] = x[b][t] + outs[b * T + t]
    head = W("lm_head.weight") if c["untie"] else W("embedding.weight")
    lm = 0.0
    for b in range(B):
        for t in range(T):
            lg = head @ norm(x[b][t], W("final_norm.weight"))
            m = lg.max()
            lm = lm + (m + torch.log(torch.exp(lg - m).sum())) - lg[targets[b, t]]
    obj = lm_scale * lm + aux_scale * (c["aux_loss_coeff"] * aux_sum + c["z_loss_coeff"] * z_sum)
    return obj, lm, aux_sum, z_sum


def selftest():
    cases = [
        dict(num_layers=3, hidden_size=16, ffn_hidden_size=24, num_attention_heads=4,
             num_query_groups=2, seq_length=5, vocab_size=11, num_experts=4, moe_router_topk=2,
             moe_ffn_hidden_size=8, moe_shared_expert_intermediate_size=12,
             moe_layer_is_moe=[0, 1, 1], score_function="softmax", norm_topk=1,
             aux_loss_coeff=0.1, z_loss_coeff=0.01, untie=1, rotary_base=10000.0,
             norm_epsilon=1e-5),
        dict(num_layers=2, hidden_size=16, ffn_hidden_size=24, num_attention_heads=2,
             num_query_groups=2, seq_length=6, vocab_size=9, num_experts=5, moe_router_topk=3,
             moe_ffn_hidden_size=8, score_function="sigmoid", norm_topk=1,
             enable_expert_bias=1, aux_loss_coeff=0.01, z_loss_coeff=0.001, untie=0,
             rotary_base=500.0, norm_epsilon=1e-6),
        dict(num_layers=1, hidden_size=8, num_attention_heads=2, num_query_groups=1,
             seq_length=4, vocab_size=7, num_experts=3, moe_router_topk=1,
             moe_ffn_hidden_size=4, score_function="softmax", norm_topk=0,
             aux_loss_coeff=1.0, z_loss_coeff=1.0, untie=1),
    ]
    worst = 0.0     # vectorised vs plain loops: same math, rounding only
    worst_fd = 0.0  # autograd vs central differences: truncation error too
    for i, cfg in enumerate(cases):
        torch.manual_seed(1234 + i)
        cfg["init_method_std"] = 0.3  # large enough that routing and attention matter
        m = MoETransformer(cfg, dtype=torch.float64)
        m.init_weights(seed=99 + i)
        with torch.no_grad():
            for name, p in m.named_oracle_params():
                if "norm" in name:
                    p.add_(0.2 * torch.randn(p.shape, dtype=p.dtype))
            m.expert_bias.normal_(0.0, 0.3)
        B, T = 2, cfg["seq_length"]
        inp = torch.randint(0, cfg["vocab_size"], (B, T))
        tgt = torch.randint(0, cfg["vocab_size"], (B, T))
        ls, as_ = 1.0 / (B * T), 0.5
        got = m(inp, tgt, ls, as_)
        got[0].backward()
        g_fast = [p.grad.clone() for _, p in m.named_oracle_params()]
        m.zero_grad()
        ref = naive_forward(m, inp, tgt, ls, as_)
        ref[0].backward()
        for label, a, b in zip(("objective", "lm", "aux", "z"), got, ref):
            r = rel(float(a), float(b))
            worst = max(worst, r)
            print("case %d %-34s %.2e" % (i, label, r))
        for (name, p), g in zip(m.named_oracle_params(), g_fast):
            r = (g - p.grad).norm().item() / max(p.grad.norm().item(), 1e-12)
            worst = max(worst, r)
            print("case %d %-34s %.2e" % (i, name, r))
        # Finite differences on a few router / expert weights: autograd through the
        # vectorised model is the thing the C gradients get compared with.
        for name in ("layers.%d.moe.router.weight" % (cfg["num_layers"] - 1),
                     "layers.%d.moe.experts.w13" % (cfg["num_layers"] - 1)):
            p = m.w(name)
            flat = p.data.view(-1)
            for j in (0, flat.numel() // 2, flat.numel() - 1):
                old = flat[j].item()
                flat[j] = old + 1e-6
                fp = m(inp, tgt, ls, as_)[0].item()
                flat[j] = old - 1e-6
                fm = m(inp, tgt, ls, as_)[0].item()
                flat[j] = old
                fd = (fp - fm) / 2e-6
                an = g_fast[[n for n, _ in m.table].index(name)].view(-1)[j].item()
                r = abs(fd - an) / max(abs(an), 1e-4)
                worst_fd = max(worst_fd, r)
                print("case %d fd %-31s %.2e (fd %.6e autograd %.6e)" % (i, name, r, fd, an))
    ok = worst <= 1e-10 and worst_fd <= 1e-5
    print("%s: selftest worst rel err %.2e (vs plain loops), %.2e (vs finite differences)"
          % ("PASS" if ok else "FAIL", worst, worst_fd))
    return 0 if ok else 1


def main(argv):
    if len(argv) != 2:
        print("usage: check.py DUMP | --selftest", file=sys.stderr)
        return 2
    if argv[1] == "--selftest":
        return selftest()
    try:
        return compare(argv[1])
    except (OSError, DumpError, KeyError, ValueError) as e:
        print("ERROR: %s" % e)
        return 2


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    sys.exit(main(sys.argv))
