#!/usr/bin/python3
"""
Expert-parallel PyTorch peer of `moe bench layer`: one MoE layer's expert part
(dispatch, SwiGLU experts, combine; forward then backward) written the way a
PyTorch MoE is, over torch.distributed with the gloo backend, one CPU process
per rank, float32.

  perf/torch_ep.py [--nproc N] [--tokens T] [--hidden H] [--ffn F] [--experts E]
                   [--topk K] [--skew S] [--iters I] [--warmup W] [--threads N] [--json]
  perf/torch_ep.py --check [--nproc N] [shape flags]
  perf/torch_ep.py --vs-moe build/bin/moe [--nproc N] [--repeats R] [bench flags]

--nproc N starts N ranks with mpirun as `moe bench layer --nproc N` does
(--oversubscribe, mpi_yield_when_idle, OMP_WAIT_POLICY=PASSIVE, cores / N
threads per rank). Started by mpirun or a torchrun-style launcher directly it
reads OMPI_COMM_WORLD_RANK / _SIZE or RANK / WORLD_SIZE; it meets its peers at
MASTER_ADDR:MASTER_PORT when both are set, else through a file in mpirun's
session directory. Without either it is one rank. (Debian's torchrun 1.13
fails under Python 3.11 before it starts a worker; setting RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT by hand works.)

Same inputs as perf/bench_layer.c: each rank holds `tokens` tokens of width
`hidden`; the `experts` SwiGLU experts of width `ffn` lie contiguously over
the ranks (E / ranks each); every token picks `topk` distinct experts drawn
with the C bench's generator and seeds (xoshiro256** seeded 1234 + rank,
popularity order seeded 4242), so each rank routes exactly the rows it routes
there. A step, per rank:
  forward:  expert counts all_to_all_single, gather the rows into expert
            order, all_to_all_single them, regroup the received rows by local
            expert (index_select), one SwiGLU per expert, ungroup,
            all_to_all_single home -> ys (R, H), R = tokens * topk
  backward: autograd from a given dys (R, H): the same exchanges reversed,
            down to the rows' gradients dxs (R, H) (as the C bench stops)
Measured like the C bench, interleaved in every iteration after a barrier,
the slowest rank's time, medians over the iterations:
  c_ms  comm only: counts, rows out, rows home, gradients out, gradients home
  p_ms  compute only: regroup + experts forward + backward on received rows
  t_ms  the whole step (C's overlap mode `none` does the same sequence)
Prints one JSON line on rank 0:
  {"impl":"pytorch-gloo","bench":"layer","ranks":..,"threads":..,"t_ms":..,"c_ms":..,"p_ms":..}

--check: correctness instead of speed. The full MoE layer (router, top-k,
experts over the ranks, weighted combine) on each rank's tokens against
tests/oracle/model.py's single-process layer (MoETransformer.moe, all experts,
every rank's tokens) with the same weights, in float64 and float32: the
outputs, the token and router gradients, every expert's weight gradients.
Prints the max abs differences; exits 1 past the tolerance.

--vs-moe MOE: side by side with moe.c. Runs `MOE bench layer --nproc N` and
this peer with the same shapes, ranks and threads R times, alternating which
goes first, and prints a markdown table (every run pair, the medians, the
fastest of each column; ratios are PyTorch / moe.c within a pair, then their
median) and one JSON line. Ratios only mean something between runs of one invocation: the
machine's load average is printed with them.

BLAS: Debian's torch does its GEMMs in OpenBLAS, whose kernels are chosen
from OPENBLAS_CORETYPE when the library loads. `moe` selects SkylakeX on
AVX-512 CPUs; --blas-core auto (default) does the same here so both run the
same kernels ("default": OpenBLAS's own choice).

Needs torch with gloo: Debian's python3-torch (`apt-get install python3-torch`,
or `scripts/setup.sh --test`), run with /usr/bin/python3.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "oracle"))

BENCH_DEFAULTS = {"tokens": 2048, "hidden": 512, "ffn": 448, "experts": 8, "topk": 2}
CHECK_DEFAULTS = {"tokens": 96, "hidden": 64, "ffn": 80, "experts": 8, "topk": 2}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=0,
                    help="start N ranks under mpirun (default: the ranks this was started as)")
    ap.add_argument("--tokens", type=int, help="tokens per rank (2048; --check 96)")
    ap.add_argument("--hidden", type=int, help="model width (512; --check 64)")
    ap.add_argument("--ffn", type=int, help="expert FFN width (448; --check 80)")
    ap.add_argument("--experts", type=int, help="experts over all ranks (8)")
    ap.add_argument("--topk", type=int, help="experts per token (2)")
    ap.add_argument("--skew", type=float, default=0.0,
                    help="Zipf-like routing skew, 0 = uniform (0)")
    ap.add_argument("--iters", type=int, default=10, help="measured iterations (10)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up iterations (2)")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads per rank (default: cores / ranks, at least 1)")
    ap.add_argument("--blas-core", default="auto",
                    help="OPENBLAS_CORETYPE: auto (SkylakeX on AVX-512, as moe), default, "
                         "or a core name")
    ap.add_argument("--check", action="store_true", help="check against the oracle instead")
    ap.add_argument("--vs-moe", metavar="MOE",
                    help="moe executable: run `MOE bench layer` and this peer side by side")
    ap.add_argument("--repeats", type=int, default=3,
                    help="--vs-moe: runs of each, interleaved (3)")
    ap.add_argument("--json", action="store_true", help="one JSON line (the default output too)")
    a = ap.parse_args(argv)
    d = CHECK_DEFAULTS if a.check else BENCH_DEFAULTS
    for k, v in d.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    for k in ("tokens", "hidden", "ffn", "experts", "topk", "iters"):
        if getattr(a, k) < 1:
            ap.error("--%s must be >= 1" % k)
    if a.vs_moe and a.check:
        ap.error("--vs-moe times; --check checks: one at a time")
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    if a.warmup < 0 or a.nproc < 0 or a.threads < 0 or not 0 <= a.skew <= 16:
        ap.error("--warmup, --nproc and --threads must be >= 0, --skew in [0, 16]")
    if a.topk > a.experts:
        ap.error("--topk %d is more than --experts %d" % (a.topk, a.experts))
    return a


# ---- launching (before torch loads) -----------------------------------------

def world_from_env():
    """(rank, size) from mpirun or torchrun, None when started by hand."""
    for r, s in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("RANK", "WORLD_SIZE")):
        if r in os.environ and s in os.environ:
            return int(os.environ[r]), int(os.environ[s])
    return None


def launch(a, argv):
    """`moe bench layer --nproc N`'s mpirun line (launch/bench_run.c) around this script."""
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.nproc)
    cmd = ["mpirun", "-np", str(a.nproc), "--oversubscribe", "--mca", "mpi_yield_when_idle", "1"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += ["-x", "OMP_NUM_THREADS=%d" % threads, "-x", "OMP_WAIT_POLICY=PASSIVE"]
    rest, skip = [], False
    for x in argv:  # drop --nproc: the ranks must not launch again
        if skip:
            skip = False
        elif x == "--nproc":
            skip = True
        elif not x.startswith("--nproc="):
            rest.append(x)
    cmd += [sys.executable, os.path.abspath(__file__), "--threads", str(threads)] + rest
    return subprocess.call(cmd)


def has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    fl = set(line.split(":", 1)[1].split())
                    return {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= fl
    except OSError:
        pass
    return False


def set_early_env(a):
    """Thread counts and BLAS kernels are fixed when the libraries load."""
    w = world_from_env()
    ranks = w[1] if w else 1
    threads = a.threads or max(1, (os.cpu_count() or 1) // ranks)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if a.blas_core == "auto":
        if ("OPENBLAS_CORETYPE" not in os.environ and os.environ.get("MOE_BLAS_AUTO") != "0"
                and has_avx512()):
            os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif a.blas_core != "default":
        os.environ["OPENBLAS_CORETYPE"] = a.blas_core
    return threads


# ---- side by side with moe.c (--vs-moe) ---------------------------------------

def run_json(cmd):
    """Runs cmd; its last stdout line that parses as a JSON object, None on failure."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    sys.stderr.write("torch_ep: %s failed (exit %d)\n%s" % (" ".join(cmd), p.returncode,
                                                          p.stderr[-2000:]))
    return None


def compare(a):
    """`moe bench layer` and this peer, same shapes, ranks and threads, interleaved."""
    P = a.nproc or 2
    shape = ["--tokens", str(a.tokens), "--hidden", str(a.hidden), "--ffn", str(a.ffn),
             "--experts", str(a.experts), "--topk", str(a.topk), "--skew", repr(a.skew),
             "--iters", str(a.iters), "--warmup", str(a.warmup)]
    moe_cmd = [a.vs_moe, "bench", "layer", "--nproc", str(P)] + shape + ["--json"]
    torch_cmd = [sys.executable, os.path.abspath(__file__), "--nproc", str(P),
                 "--blas-core", a.blas_core] + shape + ["--json"]
    if a.threads:
        torch_cmd += ["--threads", str(a.threads)]
    load0 = os.getloadavg()
    rows = []
    for rep in range(a.repeats):
        first_moe = rep % 2 == 0  # alternate who goes first: drift in load hits both
        got = {}
        for impl in (("moe", "torch") if first_moe else ("torch", "moe")):
            got[impl] = run_json(moe_cmd if impl == "moe" else torch_cmd)
            if got[impl] is None:
                return 1
        rows.append(got)
    load1 = os.getloadavg()

    m, t = rows[0]["moe"], rows[0]["torch"]
    print("expert layer, %d ranks x %d threads (moe.c) / %d threads (PyTorch %s, gloo); "
          "%d tokens x %d per rank, ffn %d, top-%d of %d experts, skew %g; "
          "medians of %d iterations (slowest rank), %d repeats interleaved; "
          "load average %.2f before, %.2f after (%d cores)"
          % (P, m["threads"], t["threads"], t["torch"], a.tokens, a.hidden, a.ffn, a.topk,
             a.experts, a.skew, a.iters, a.repeats, load0[0], load1[0], os.cpu_count() or 0))
    print()
    print("| run | first | moe.c none | coarse | fine | moe.c comm C | compute P "
          "| PyTorch step | comm C | compute P | PyTorch / moe.c none |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def med(f):
        return statistics.median(f(r) for r in rows)

    def fastest(f):  # other work only ever slows a run: the quiet machine's estimate
        return min(f(r) for r in rows)

    best = lambda r: min(r["moe"]["modes"][k]["t_ms"] for k in ("none", "coarse", "fine"))
    # the ratio within each run pair: both halves saw about the same load
    ratio = lambda r: r["torch"]["t_ms"] / r["moe"]["modes"]["none"]["t_ms"]

    def line(label, first, f, of_ratios=True):
        mn, mc, mf = (f(lambda r: r["moe"]["modes"][k]["t_ms"]) for k in ("none", "coarse", "fine"))
        tt = f(lambda r: r["torch"]["t_ms"])
        print("| %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.2f |"
              % (label, first, mn, mc, mf, f(lambda r: r["moe"]["c_ms"]),
                 f(lambda r: r["moe"]["p_ms"]), tt, f(lambda r: r["torch"]["c_ms"]),
                 f(lambda r: r["torch"]["p_ms"]), f(ratio) if of_ratios else tt / mn))

    for i, r in enumerate(rows):
        line(str(i + 1), "moe.c" if i % 2 == 0 else "PyTorch", lambda g, r=r: g(r))
    line("median", "", med)
    line("fastest", "", fastest, of_ratios=False)
    summary = {
        "bench": "layer-vs-torch-gloo", "ranks": P, "repeats": a.repeats,
        "moe_threads": m["threads"], "torch_threads": t["threads"], "torch": t["torch"],
        "tokens": a.tokens, "hidden": a.hidden, "ffn": a.ffn, "experts": a.experts,
        "topk": a.topk, "skew": a.skew, "iters": a.iters,
        "moe_none_ms": med(lambda r: r["moe"]["modes"]["none"]["t_ms"]),
        "moe_best_ms": med(best),
        "torch_ms": med(lambda r: r["torch"]["t_ms"]),
        "moe_c_ms": med(lambda r: r["moe"]["c_ms"]),
        "torch_c_ms": med(lambda r: r["torch"]["c_ms"]),
        "moe_p_ms": med(lambda r: r["moe"]["p_ms"]),
        "torch_p_ms": med(lambda r: r["torch"]["p_ms"]),
        "load_before": load0[0], "load_after": load1[0],
        "openblas_coretype": t["openblas_coretype"],
    }
    summary["speedup_vs_torch"] = med(lambda r: r["torch"]["t_ms"] / best(r))
    summary["speedup_vs_torch_none"] = med(ratio)
    summary["comm_ratio"] = med(lambda r: r["torch"]["c_ms"] / r["moe"]["c_ms"])
    summary["compute_ratio"] = med(lambda r: r["torch"]["p_ms"] / r["moe"]["p_ms"])
    summary["fastest"] = {
        "moe_best_ms": fastest(best), "torch_ms": fastest(lambda r: r["torch"]["t_ms"]),
        "moe_c_ms": fastest(lambda r: r["moe"]["c_ms"]),
        "torch_c_ms": fastest(lambda r: r["torch"]["c_ms"]),
        "moe_p_ms": fastest(lambda r: r["moe"]["p_ms"]),
        "torch_p_ms": fastest(lambda r: r["torch"]["p_ms"])}
    q = summary["fastest"]
    print()
    print("PyTorch / moe.c, medians of the per-run ratios: step %.2fx against moe.c's best mode "
          "(%.2fx against none), comm alone %.2fx (gloo / MPI), compute alone %.2fx"
          % (summary["speedup_vs_torch"], summary["speedup_vs_torch_none"],
             summary["comm_ratio"], summary["compute_ratio"]))
    print("fastest runs: step %.2fx against moe.c's best mode, comm alone %.2fx, "
          "compute alone %.2fx"
          % (q["torch_ms"] / q["moe_best_ms"], q["torch_c_ms"] / q["moe_c_ms"],
             q["torch_p_ms"] / q["moe_p_ms"]))
    print(json.dumps(summary))
    return 0


# ---- the C bench's generator (runtime/base/rng.c), for identical routing ------

M64 = (1 << 64) - 1


class Rng:
    """xoshiro256** seeded by splitmix64, as moe_rng."""

    def __init__(self, seed):
        x = seed & M64
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & M64

    def u64(self):
        s = self.s
        out = (self._rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return out

    def below(self, n):
        limit = M64 - M64 % n
        while True:
            x = self.u64()
            if x < limit:
                return x % n

    def uniform(self):
        return (self.u64() >> 11) * 2.0 ** -53


def expert_weights(E, skew):
    """bench_layer.c's expert_weights: 1 / (rank + 1)^skew over a fixed permutation."""
    perm = list(range(E))
    r = Rng(4242)
    for e in range(E - 1, 0, -1):
        j = r.below(e + 1)
        perm[e], perm[j] = perm[j], perm[e]
    w = [0.0] * E
    for k in range(E):
        w[perm[k]] = (k + 1.0) ** -skew
    return w


def draw_routing(N, E, K, w, r):
    """bench_layer.c's draw_routing: K distinct experts per token (contiguous
    placement: the slot is the expert), as a flat list of N * K."""
    slots = []
    for _ in range(N):
        left = list(w)
        for _ in range(K):
            total = 0.0
            for e in range(E):
                total += left[e]
            u = r.uniform() * total
            pick = -1
            for e in range(E):
                if pick >= 0:
                    break
                if left[e] > 0 and (u < left[e] or e == E - 1):
                    pick = e
                u -= left[e]
            e = E - 1
            while pick < 0:
                if left[e] > 0:
                    pick = e
                e -= 1
            left[pick] = 0.0
            slots.append(pick)
    return slots


# ---- the expert-parallel layer ------------------------------------------------

def main(argv):
    a = parse_args(argv)
    if a.vs_moe:
        return compare(a)
    if a.nproc and world_from_env() is None and a.nproc > 1:
        return launch(a, argv)
    threads = set_early_env(a)

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    torch.set_num_threads(threads)

    class AllToAll(torch.autograd.Function):
        """all_to_all_single of rows; its gradient goes back with the splits swapped."""

        @staticmethod
        def forward(ctx, x, out_splits, in_splits):
            ctx.splits = (out_splits, in_splits)
            out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
            dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits)
            return out

        @staticmethod
        def backward(ctx, g):
            out_splits, in_splits = ctx.splits
            gi = g.new_empty((sum(in_splits),) + tuple(g.shape[1:]))
            dist.all_to_all_single(gi, g.contiguous(), in_splits, out_splits)
            return gi, None, None

    def swiglu_mlp(x, w13, w2):
        gate, up = F.linear(x, w13).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, w2)

    def exchange_counts(counts, P):
        """counts (E,) rows per expert from here -> (P, E_local) rows per (source, local expert)."""
        rc = torch.empty_like(counts)
        dist.all_to_all_single(rc, counts)
        return rc.view(P, -1)

    def splits(counts, rc, P):
        return rc.sum(1).tolist(), counts.view(P, -1).sum(1).tolist()

    class Grouping:
        """Received rows come as (source, local expert) segments; the experts
        run on rows grouped by local expert. perm gathers them, inv puts them back."""

        def __init__(self, rc):
            El = rc.shape[1]
            row_e = torch.repeat_interleave(torch.arange(El).repeat(rc.shape[0]), rc.reshape(-1))
            self.perm = torch.argsort(row_e, stable=True)
            self.inv = torch.argsort(self.perm)
            self.per_expert = rc.sum(0).tolist()

    def experts(xr, g, w13, w2):
        """xr (recv, C) as received -> (recv, C) expert outputs, same order."""
        xe = xr.index_select(0, g.perm)
        # split, not slices: its backward concatenates the experts' input
        # gradients once instead of zero-filling a full-size tensor per expert
        parts = xe.split(g.per_expert, 0)
        outs = [swiglu_mlp(p, w1, w2_) for p, w1, w2_ in zip(parts, w13.unbind(0), w2.unbind(0))]
        return torch.cat(outs, 0).index_select(0, g.inv)

    def ep_experts(xs, counts, w13, w2, P):
        """xs (R, C) rows sorted by expert, counts (E,) -> ys (R, C): dispatch,
        experts on their owners, combine. Differentiable in xs, w13, w2."""
        rc = exchange_counts(counts, P)
        recv, send = splits(counts, rc, P)
        xr = AllToAll.apply(xs, recv, send)
        yr = experts(xr, Grouping(rc), w13, w2)
        return AllToAll.apply(yr, send, recv)

    # ---- process group ------------------------------------------------------
    w = world_from_env()
    rank, P = w if w else (0, 1)
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=P)
    elif "OMPI_COMM_WORLD_RANK" in os.environ:
        sdir = (os.environ.get("OMPI_MCA_orte_jobfam_session_dir")
                or os.environ.get("OMPI_MCA_orte_top_session_dir"))
        jid = os.environ.get("OMPI_MCA_ess_base_jobid", "0")
        if not sdir:
            print("torch_ep: no MASTER_ADDR/MASTER_PORT and no mpirun session directory",
                  file=sys.stderr)
            return 2
        dist.init_process_group("gloo", init_method="file://%s/torch_ep_%s" % (sdir, jid),
                                rank=rank, world_size=P)
    else:
        store = tempfile.NamedTemporaryFile(prefix="torch_ep_", delete=False)
        store.close()
        os.unlink(store.name)
        dist.init_process_group("gloo", init_method="file://" + store.name, rank=0, world_size=1)

    E, K, N, C, Fh = a.experts, a.topk, a.tokens, a.hidden, a.ffn
    if E % P:
        if rank == 0:
            print("torch_ep: --experts %d must be a multiple of the ranks (%d)" % (E, P),
                  file=sys.stderr)
        return 2
    El = E // P

    # ---- --check: against the single-process oracle -------------------------
    def check(dtype):
        from model import MoETransformer
        heads = 2
        cfg = {"num_layers": 1, "hidden_size": C, "num_attention_heads": heads,
               "seq_length": 4, "vocab_size": 16, "num_experts": E, "moe_router_topk": K,
               "moe_ffn_hidden_size": Fh, "norm_topk": 1, "score_function": "softmax"}
        model = MoETransformer(cfg, dtype=dtype)
        g = torch.Generator().manual_seed(7)
        # every rank draws the same global tensors and keeps its share
        router = torch.randn(E, C, generator=g, dtype=torch.float64).to(dtype)
        w13 = (torch.randn(E, 2 * Fh, C, generator=g, dtype=torch.float64) / C ** 0.5).to(dtype)
        w2 = (torch.randn(E, C, Fh, generator=g, dtype=torch.float64) / Fh ** 0.5).to(dtype)
        X = torch.randn(P * N, C, generator=g, dtype=torch.float64).to(dtype)
        G = torch.randn(P * N, C, generator=g, dtype=torch.float64).to(dtype)
        mine = slice(rank * N, (rank + 1) * N)
        ours = slice(rank * El, (rank + 1) * El)

        # oracle: one process, all experts, every rank's tokens
        with torch.no_grad():
            model.w("layers.0.moe.router.weight").copy_(router)
            model.w("layers.0.moe.experts.w13").copy_(w13)
            model.w("layers.0.moe.experts.w2").copy_(w2)
        Xo = X.clone().requires_grad_()
        out_o, _, _ = model.moe(0, Xo, None)
        (out_o * G).sum().backward()
        logits_o = F.linear(X, router)
        idx_o = model.route(logits_o, None)[1]

        # expert parallel: this rank's tokens and experts
        x = X[mine].clone().requires_grad_()
        rw = router.clone().requires_grad_()
        w13l = w13[ours].clone().requires_grad_()
        w2l = w2[ours].clone().requires_grad_()
        _, idx, topk_w = model.route(F.linear(x, rw), None)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // K
        ys = ep_experts(x.index_select(0, token), torch.bincount(flat, minlength=E), w13l, w2l, P)
        ys = ys * topk_w.reshape(-1).index_select(0, order)[:, None]
        out = torch.zeros_like(x).index_add(0, token, ys)
        (out * G[mine]).sum().backward()
        rgrad = rw.grad.clone()
        dist.all_reduce(rgrad)  # each rank's tokens give their share of the router's gradient

        p = model.p
        pairs = {  # (expert parallel, oracle)
            "output": (out, out_o[mine]),
            "d_tokens": (x.grad, Xo.grad[mine]),
            "d_router": (rgrad, p["layers/0/moe/router/weight"].grad),
            "d_w13": (w13l.grad, p["layers/0/moe/experts/w13"].grad[ours]),
            "d_w2": (w2l.grad, p["layers/0/moe/experts/w2"].grad[ours]),
        }
        routed_same = float(bool(torch.equal(idx, idx_o[mine])))
        # max abs differences, then the largest magnitudes (the tolerance's scale)
        v = torch.tensor([(e - o).abs().max().item() for e, o in pairs.values()]
                         + [o.abs().max().item() for _, o in pairs.values()]
                         + [-routed_same], dtype=torch.float64)
        dist.all_reduce(v, op=dist.ReduceOp.MAX)
        n = len(pairs)
        diff = {k: v[i].item() for i, k in enumerate(pairs)}
        scale = {k: max(v[n + i].item(), 1.0) for i, k in enumerate(pairs)}
        return diff, scale, v[-1].item() == -1.0

    if a.check:
        ok, res = True, {}
        # tolerance: relative to each quantity's largest magnitude (at least 1)
        for name, dtype, tol in (("float64", torch.float64, 1e-12),
                                 ("float32", torch.float32, 1e-5)):
            d, scale, same = check(dtype)
            good = same and all(d[k] <= tol * scale[k] for k in d)
            ok = ok and good
            res[name] = {"max_abs_diff": d, "max_abs_value": scale, "routing_identical": same,
                         "relative_tolerance": tol, "ok": good}
        if rank == 0:
            print(json.dumps({"impl": "pytorch-gloo",
                              "check": "ep vs oracle (tests/oracle/model.py)",
                              "ranks": P, "tokens": N, "hidden": C, "ffn": Fh, "experts": E,
                              "topk": K, "torch": torch.__version__, "ok": ok, **res}))
        dist.barrier()
        dist.destroy_process_group()
        return 0 if ok else 1

    # ---- the benchmark ------------------------------------------------------
    r = Rng(1234 + rank)
    slots = torch.tensor(draw_routing(N, E, K, expert_weights(E, a.skew), r), dtype=torch.long)
    order = torch.argsort(slots, stable=True)  # rows by expert, then (token, slot): route plan
    row_token = order // K
    counts = torch.bincount(slots, minlength=E)
    R = N * K
    gen = torch.Generator().manual_seed(1234 + rank)
    x = torch.rand(N, C, generator=gen) * 2 - 1
    dys = torch.rand(R, C, generator=gen) * 2 - 1
    w13 = ((torch.rand(El, 2 * Fh, C, generator=gen) * 2 - 1) / C ** 0.5).requires_grad_()
    w2 = ((torch.rand(El, C, Fh, generator=gen) * 2 - 1) / Fh ** 0.5).requires_grad_()

    def comm_only(keep):
        rc = exchange_counts(counts, P)
        recv, send = splits(counts, rc, P)
        xs = x.index_select(0, row_token)
        xr = xs.new_empty((sum(recv), C))
        dist.all_to_all_single(xr, xs, recv, send)
        ys = xs.new_empty((R, C))
        dist.all_to_all_single(ys, xr, send, recv)
        dyr = xs.new_empty((sum(recv), C))
        dist.all_to_all_single(dyr, dys, recv, send)
        dxs = xs.new_empty((R, C))
        dist.all_to_all_single(dxs, dyr, send, recv)
        keep["xr"], keep["dyr"], keep["g"] = xr, dyr, Grouping(rc)

    def compute_only(keep):
        xr = keep["xr"].detach().requires_grad_()
        yr = experts(xr, keep["g"], w13, w2)
        yr.backward(keep["dyr"])

    def step(_):
        with torch.no_grad():
            xs = x.index_select(0, row_token)
        xs.requires_grad_()
        ys = ep_experts(xs, counts, w13, w2, P)
        ys.backward(dys)
        return xs.grad

    runs = (comm_only, compute_only, step)
    times = torch.zeros(len(runs), a.iters, dtype=torch.float64)
    keep = {}
    for it in range(-a.warmup, a.iters):
        for m, run in enumerate(runs):
            w13.grad = None  # gradients accumulate: each run starts from none
            w2.grad = None
            dist.barrier()
            t0 = time.perf_counter()
            run(keep)
            dt = time.perf_counter() - t0
            if it >= 0:
                times[m, it] = dt
    dist.all_reduce(times, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
    routed = counts.clone()
    dist.all_reduce(routed)
    if rank == 0:
        med = [1e3 * statistics.median(times[m].tolist()) for m in range(len(runs))]
        print(json.dumps({
            "impl": "pytorch-gloo", "bench": "layer",
            "t_ms": round(med[2], 3), "c_ms": round(med[0], 3), "p_ms": round(med[1], 3),
            "ranks": P, "threads": torch.get_num_threads(), "tokens": N, "hidden": C, "ffn": Fh,
            "experts": E, "topk": K, "skew": a.skew, "iters": a.iters, "warmup": a.warmup,
            "rows_per_expert": routed.tolist(),
            "torch": torch.__version__,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "default"),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        }))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
