"""
PyTorch reference of moe.c's model: the decoder-only MoE transformer that
runtime/model.h documents, with the same parameter names and layouts, so the C
model's weights load here tensor for tensor.

Two uses:
  * the oracle (tests/oracle/check.py): float64, C's weights and batch, compare
    the objective and every gradient;
  * the speed baseline (perf/torch_bench.py): float32, trained with AdamW.
So the math follows model.h / layers/*.h exactly and the code is written the
way a PyTorch MoE implementation is (tokens sorted by expert, every expert runs
on its own tokens only, results scattered back with index_add).

Config keys (a dict; missing ones take DEFAULTS):
  num_layers, hidden_size, ffn_hidden_size, num_attention_heads,
  num_query_groups (0 = num_attention_heads), seq_length, vocab_size,
  num_experts, moe_router_topk, moe_ffn_hidden_size,
  moe_shared_expert_intermediate_size (0 = none), moe_layer_is_moe (list of
  0/1, one per layer), score_function ('softmax' | 'sigmoid' or 0 | 1),
  norm_topk, aux_loss_coeff, z_loss_coeff, untie, enable_expert_bias,
  rotary_base, norm_epsilon, capacity_factor (<= 0 only: dropless),
  init_method_std (initialisation for the benchmark only).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = {
    "num_layers": 8,
    "hidden_size": 512,
    "ffn_hidden_size": 2048,
    "num_attention_heads": 8,
    "num_query_groups": 0,
    "seq_length": 256,
    "vocab_size": 256,
    "num_experts": 8,
    "moe_router_topk": 2,
    "moe_ffn_hidden_size": 1024,
    "moe_shared_expert_intermediate_size": 0,
    "moe_layer_is_moe": None,  # None = every layer MoE
    "score_function": "softmax",
    "norm_topk": 0,
    "aux_loss_coeff": 0.0,
    "z_loss_coeff": 0.0,
    "untie": 0,
    "enable_expert_bias": 0,
    "rotary_base": 10000.0,
    "norm_epsilon": 1e-5,
    "capacity_factor": 0.0,
    "init_method_std": 0.02,
}


def resolve_config(cfg):
    """Fills defaults and derived values; refuses what the reference lacks."""
    c = dict(DEFAULTS)
    c.update({k: v for k, v in cfg.items() if k in DEFAULTS})
    if not c["num_query_groups"]:
        c["num_query_groups"] = c["num_attention_heads"]
    if c["moe_layer_is_moe"] is None:
        c["moe_layer_is_moe"] = [1] * c["num_layers"]
    c["moe_layer_is_moe"] = [int(v) for v in c["moe_layer_is_moe"]]
    sf = c["score_function"]
    if sf in (0, "0", "softmax"):
        c["score_function"] = "softmax"
    elif sf in (1, "1", "sigmoid"):
        c["score_function"] = "sigmoid"
    else:
        raise ValueError("score_function must be softmax or sigmoid, got %r" % (sf,))
    if len(c["moe_layer_is_moe"]) != c["num_layers"]:
        raise ValueError("moe_layer_is_moe has %d entries for %d layers"
                         % (len(c["moe_layer_is_moe"]), c["num_layers"]))
    if c["capacity_factor"] > 0:
        raise ValueError("the reference is dropless: capacity_factor must be <= 0")
    if c["hidden_size"] % c["num_attention_heads"]:
        raise ValueError("num_attention_heads must divide hidden_size")
    if c["num_attention_heads"] % c["num_query_groups"]:
        raise ValueError("num_query_groups must divide num_attention_heads")
    if (c["hidden_size"] // c["num_attention_heads"]) % 2:
        raise ValueError("head dim must be even for RoPE")
    if any(c["moe_layer_is_moe"]) and not (1 <= c["moe_router_topk"] <= c["num_experts"]):
        raise ValueError("moe_router_topk must be in [1, num_experts]")
    return c


def param_table(c):
    """(name, shape) in model.h's order."""
    C, V = c["hidden_size"], c["vocab_size"]
    NH, NKV = c["num_attention_heads"], c["num_query_groups"]
    HD = C // NH
    E, Fe = c["num_experts"], c["moe_ffn_hidden_size"]
    Fs, Fd = c["moe_shared_expert_intermediate_size"], c["ffn_hidden_size"]
    t = [("embedding.weight", (V, C))]
    for l in range(c["num_layers"]):
        p = "layers.%d." % l
        t += [(p + "attn_norm.weight", (C,)),
              (p + "attn.qkv.weight", ((NH + 2 * NKV) * HD, C)),
              (p + "attn.out.weight", (C, NH * HD)),
              (p + "ffn_norm.weight", (C,))]
        if c["moe_layer_is_moe"][l]:
            t += [(p + "moe.router.weight", (E, C)),
                  (p + "moe.experts.w13", (E, 2 * Fe, C)),
                  (p + "moe.experts.w2", (E, C, Fe))]
            if Fs > 0:
                t += [(p + "moe.shared.w13", (2 * Fs, C)),
                      (p + "moe.shared.w2", (C, Fs))]
        else:
            t += [(p + "mlp.w13", (2 * Fd, C)),
                  (p + "mlp.w2", (C, Fd))]
    t.append(("final_norm.weight", (C,)))
    if c["untie"]:
        t.append(("lm_head.weight", (V, C)))
    return t


def _key(name):
    # ParameterDict keys may not contain '.'; the table's names do.
    return name.replace(".", "/")


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def swiglu_mlp(x, w13, w2):
    """x (N, C), w13 (2F, C): gate rows then up rows, w2 (C, F)."""
    gate, up = F.linear(x, w13).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, w2)


def rope(x, cos, sin):
    """x (B, T, H, HD); rotate_half: pairs i with i + HD/2. cos/sin (T, 1, HD/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class MoETransformer(nn.Module):
    def __init__(self, cfg, dtype=torch.float32, device=None):
        super().__init__()
        c = resolve_config(cfg)
        self.cfg = c
        self.table = param_table(c)
        self.p = nn.ParameterDict()
        for name, shape in self.table:
            self.p[_key(name)] = nn.Parameter(torch.empty(shape, dtype=dtype, device=device))
        self.moe_layers = [l for l in range(c["num_layers"]) if c["moe_layer_is_moe"][l]]
        # Expert bias: selection only, no gradient, saved with the model state.
        self.register_buffer("expert_bias",
                             torch.zeros(len(self.moe_layers), c["num_experts"], dtype=dtype,
                                         device=device))
        HD = c["hidden_size"] // c["num_attention_heads"]
        T = c["seq_length"]
        # angle t * theta^(-2i/HD), built in float64 like the C table's double theta.
        inv = c["rotary_base"] ** (-torch.arange(0, HD // 2, dtype=torch.float64) * 2.0 / HD)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
        self.register_buffer("rope_cos", ang.cos().to(dtype)[:, None, :].to(device))
        self.register_buffer("rope_sin", ang.sin().to(dtype)[:, None, :].to(device))
        self.register_buffer("causal_mask",
                             torch.ones(T, T, dtype=torch.bool, device=device).triu(1))
        self.last_route_margin = math.inf  # smallest nonzero k-th vs (k+1)-th gap
        self.last_route_ties = 0           # tokens whose k-th and (k+1)-th tie exactly
        self.route_counts = []  # per MoE layer: (token, slot) pairs per expert, last forward
        self.init_weights()

    # ---- parameters -------------------------------------------------------
    def w(self, name):
        return self.p[_key(name)]

    def named_oracle_params(self):
        """[(table name, Parameter)] in model.h's order."""
        return [(name, self.p[_key(name)]) for name, _ in self.table]

    @torch.no_grad()
    def init_weights(self, seed=None):
        """N(0, std) matrices, output projections N(0, std/sqrt(2L)), norms 1
        (moe_model_init's recipe; the numbers differ from C's RNG)."""
        g = torch.Generator(device="cpu")
        if seed is not None:
            g.manual_seed(seed)
        std = self.cfg["init_method_std"]
        out_std = std / math.sqrt(2.0 * self.cfg["num_layers"])
        for name, p in self.named_oracle_params():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                s = out_std if (name.endswith("attn.out.weight") or name.endswith(".w2")) else std
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).mul_(s))
        self.expert_bias.zero_()

    @torch.no_grad()
    def update_expert_bias(self, rate):
        """Aux-loss-free balancing after a step (router.h):
        bias[e] += rate * sign(mean(counts) - counts[e]), counts of the last forward."""
        for i, counts in enumerate(self.route_counts):
            cnt = torch.tensor(counts, dtype=self.expert_bias.dtype,
                               device=self.expert_bias.device)
            self.expert_bias[i] += rate * torch.sign(cnt.mean() - cnt)

    # ---- blocks -----------------------------------------------------------
    def attention(self, l, h):
        """h (B, T, C) -> (B, T, C): qkv, RoPE, causal GQA attention, out proj."""
        c = self.cfg
        B, T, C = h.shape
        NH, NKV = c["num_attention_heads"], c["num_query_groups"]
        HD, G = C // NH, NH // NKV
        qkv = F.linear(h, self.w("layers.%d.attn.qkv.weight" % l)).view(B, T, NH + 2 * NKV, HD)
        q, k, v = qkv.split([NH, NKV, NKV], dim=2)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        # query head h reads kv head h // G: group the queries instead of copying k, v.
        q = q.permute(0, 2, 1, 3).reshape(B, NKV, G * T, HD)
        k = k.permute(0, 2, 3, 1)                      # (B, NKV, HD, T)
        v = v.permute(0, 2, 1, 3)                      # (B, NKV, T, HD)
        att = torch.matmul(q, k).mul_(1.0 / math.sqrt(HD)).view(B, NKV, G, T, T)
        att = att.masked_fill(self.causal_mask[:T, :T], float("-inf")).softmax(dim=-1)
        y = torch.matmul(att.view(B, NKV, G * T, T), v)  # (B, NKV, G*T, HD)
        y = y.view(B, NH, T, HD).transpose(1, 2).reshape(B, T, NH * HD)
        return F.linear(y, self.w("layers.%d.attn.out.weight" % l))

    def route(self, logits, bias):
        """logits (N, E) -> scores, topk_idx (N, K), topk_w (N, K); router.h."""
        c = self.cfg
        K = c["moe_router_topk"]
        if c["score_function"] == "softmax":
            scores = logits.softmax(dim=-1)
        else:
            scores = torch.sigmoid(logits)
        with torch.no_grad():
            sel = scores if bias is None else scores + bias
            # Stable descending sort: ties go to the lower expert index.
            vals, order = torch.sort(sel, dim=-1, descending=True, stable=True)
            idx = order[:, :K]
            if K < sel.shape[1]:
                # How close routing came to a different choice (for the oracle's
                # report); exact ties are counted apart: the rule decides them.
                gap = vals[:, K - 1] - vals[:, K]
                tie = gap == 0
                self.last_route_ties += int(tie.sum().item())
                if not bool(tie.all()):
                    margin = gap[~tie].min().item()
                    self.last_route_margin = min(self.last_route_margin, margin)
        topk_w = scores.gather(1, idx)
        if c["norm_topk"]:
            topk_w = topk_w / topk_w.sum(dim=-1, keepdim=True)
        return scores, idx, topk_w

    def experts(self, l, x, idx, topk_w):
        """Dropless routed experts: x (N, C), idx/topk_w (N, K) -> (N, C)."""
        N, K = idx.shape
        E = self.cfg["num_experts"]
        # unbind, not w13[e]: its backward stacks the E gradients once instead of
        # zero-filling a full (E, 2F, C) tensor per expert.
        w13 = self.w("layers.%d.moe.experts.w13" % l).unbind(0)
        w2 = self.w("layers.%d.moe.experts.w2" % l).unbind(0)
        flat = idx.reshape(-1)
        # Rows sorted by expert, then by (token, slot) as experts.h orders them.
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=E).tolist()
        token = order // K
        xs = x.index_select(0, token)
        ys = []
        start = 0
        for e in range(E):
            n = counts[e]
            if n:
                ys.append(swiglu_mlp(xs[start:start + n], w13[e], w2[e]))
            start += n
        ys = torch.cat(ys, dim=0) * topk_w.reshape(-1).index_select(0, order)[:, None]
        return torch.zeros_like(x).index_add(0, token, ys), counts

    def moe(self, l, x, bias):
        """x (N, C) -> out (N, C), aux, z for MoE layer l."""
        c = self.cfg
        N = x.shape[0]
        E, K = c["num_experts"], c["moe_router_topk"]
        logits = F.linear(x, self.w("layers.%d.moe.router.weight" % l))
        scores, idx, topk_w = self.route(logits, bias)
        out, counts = self.experts(l, x, idx, topk_w)
        self.route_counts.append(counts)
        if c["moe_shared_expert_intermediate_size"] > 0:
            out = out + swiglu_mlp(x, self.w("layers.%d.moe.shared.w13" % l),
                                   self.w("layers.%d.moe.shared.w2" % l))
        # Switch/GShard aux loss: counts carry no gradient, p does.
        p = scores if c["score_function"] == "softmax" else scores / scores.sum(-1, keepdim=True)
        cnt = torch.tensor(counts, dtype=x.dtype, device=x.device)
        aux = (cnt * p.sum(dim=0)).sum() * (E / (K * float(N) * float(N)))
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return out, aux, z

    # ---- model ------------------------------------------------------------
    def forward(self, inputs, targets, lm_scale=1.0, aux_scale=1.0):
        """inputs/targets (B, T) int. Returns (objective, lm_loss_sum, aux_sum, z_sum):
        objective = lm_scale*lm + aux_scale*(aux_coeff*aux_sum + z_coeff*z_sum)."""
        c = self.cfg
        B, T = inputs.shape
        N, C = B * T, c["hidden_size"]
        eps = c["norm_epsilon"]
        self.last_route_margin = math.inf
        self.last_route_ties = 0
        self.route_counts = []
        x = F.embedding(inputs.long(), self.w("embedding.weight"))
        aux_sum = x.new_zeros(())
        z_sum = x.new_zeros(())
        mi = 0
        for l in range(c["num_layers"]):
            p = "layers.%d." % l
            x = x + self.attention(l, rmsnorm(x, self.w(p + "attn_norm.weight"), eps))
            h = rmsnorm(x, self.w(p + "ffn_norm.weight"), eps).reshape(N, C)
            if c["moe_layer_is_moe"][l]:
                bias = self.expert_bias[mi] if c["enable_expert_bias"] else None
                y, aux, z = self.moe(l, h, bias)
                aux_sum = aux_sum + aux
                z_sum = z_sum + z
                mi += 1
            else:
                y = swiglu_mlp(h, self.w(p + "mlp.w13"), self.w(p + "mlp.w2"))
            x = x + y.view(B, T, C)
        h = rmsnorm(x, self.w("final_norm.weight"), eps).reshape(N, C)
        head = self.w("lm_head.weight") if c["untie"] else self.w("embedding.weight")
        logits = F.linear(h, head)
        lm = F.cross_entropy(logits, targets.reshape(N).long(), reduction="sum")
        obj = lm_scale * lm + aux_scale * (c["aux_loss_coeff"] * aux_sum
                                           + c["z_loss_coeff"] * z_sum)
        return obj, lm, aux_sum, z_sum
