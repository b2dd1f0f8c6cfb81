#!/usr/bin/env python3
"""Checks a `moe checkpoint export` file against the checkpoint it came from,
with readers that are not moe.c's.

  safetensors_check.py check FILE --inspect REF.json [--with-optimizer]
      REF.json is `moe inspect checkpoint STEP_DIR --json` of the exported
      step. The reference values are read straight from the shard files it
      lists (every slice at its byte offset, stacked along dim 0 by its
      local offset), so they do not go through moe.c's reader either.
      FILE is parsed here by the format's rules (header length, JSON,
      dtypes, offsets contiguous from 0 to the end), and, when the package
      is installed, by Hugging Face's safetensors (safetensors.torch with
      torch, else safetensors.numpy). Every tensor must be there under the
      export's name ("model.X" -> "X"; with --with-optimizer also "optim.*"
      and "state.*"), nothing else, with the global shape and the
      checkpoint's exact bits; __metadata__ must hold format "pt", the
      step and the config.

  safetensors_check.py rewrite IN OUT [--dtype F32|F16|BF16|F64] [--prefix P]
      Rewrites IN with Hugging Face's writer (safetensors.torch, else .numpy):
      every tensor converted to dtype and renamed P + name (optim.* and
      state.* keep their names), so moe.c's reader is tested on files it
      did not write.

Exit status: 0 all good, 1 a mismatch (printed), 2 bad usage, 77 skipped:
`check` skips only when neither safetensors nor numpy is importable;
`rewrite` needs safetensors and numpy (and torch for BF16).
"""
import argparse
import json
import os
import struct
import sys

SKIP = 77

try:
    import numpy as np
except ImportError:  # the checks below fall back to plain bytes
    np = None
try:
    import safetensors  # noqa: F401
    HAVE_ST = True
except ImportError:
    HAVE_ST = False

DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
MAX_HEADER = 100_000_000


class Mismatch(Exception):
    pass


def parse_file(path):
    """(header dict, metadata dict, data bytes), checked by the format's rules."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise Mismatch(f"{path}: {len(blob)} bytes, no header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > MAX_HEADER or 8 + n > len(blob):
        raise Mismatch(f"{path}: header length {n} is out of range")
    raw = blob[8 : 8 + n]
    if raw[:1] != b"{":
        raise Mismatch(f"{path}: header does not start with '{{'")
    if (8 + n) % 8 != 0:
        raise Mismatch(f"{path}: the data buffer starts at {8 + n}, not 8-byte aligned")

    def no_dups(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise Mismatch(f"{path}: duplicate key in the header")
        return dict(pairs)

    header = json.loads(raw.decode("utf-8").rstrip(" "), object_pairs_hook=no_dups)
    meta = header.pop("__metadata__", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise Mismatch(f"{path}: __metadata__ values must be strings")
    data = blob[8 + n :]
    spans = []
    for name, t in header.items():
        if set(t) != {"dtype", "shape", "data_offsets"}:
            raise Mismatch(f"{path}: tensor {name} has keys {sorted(t)}")
        if t["dtype"] != "F32":
            raise Mismatch(f"{path}: tensor {name} is {t['dtype']}, the export writes F32")
        numel = 1
        for d in t["shape"]:
            numel *= d
        b, e = t["data_offsets"]
        if e - b != numel * DTYPE_SIZE[t["dtype"]]:
            raise Mismatch(f"{path}: tensor {name}: offsets [{b}, {e}] vs shape {t['shape']}")
        spans.append((b, e, name))
    at = 0
    for b, e, name in sorted(spans):
        if b != at:
            raise Mismatch(f"{path}: tensor {name} starts at {b}, expected {at} (hole or overlap)")
        at = e
    if at != len(data):
        raise Mismatch(f"{path}: tensors cover {at} of {len(data)} data bytes")
    return header, meta, data


def reference(inspect_json, with_optimizer):
    """{export name: (global shape, bytes)} from the shard files the inspect report lists."""
    with open(inspect_json) as f:
        rep = json.load(f)
    if not rep.get("valid"):
        raise Mismatch(f"{inspect_json}: the checkpoint is not valid: {rep.get('error')}")
    step_dir = rep["dir"]
    shards = rep["shards"]
    slices = {}
    for t in rep["tensors"]:
        if t["dtype"] != "f32":
            raise Mismatch(f"{t['name']}: dtype {t['dtype']}")
        with open(os.path.join(step_dir, shards[t["shard"]]["file"]), "rb") as f:
            f.seek(t["byte_offset"])
            raw = f.read(t["bytes"])
        if len(raw) != t["bytes"]:
            raise Mismatch(f"{t['name']}: shard too short")
        first = t["local_offset"][0] if t["local_offset"] else 0
        slices.setdefault(t["name"], (t["global_shape"], []))[1].append((first, raw))
    ref = {}
    for name, (shape, parts) in slices.items():
        if name.startswith("model."):
            out = name[len("model.") :]
        elif with_optimizer:
            out = name
        else:
            continue
        ref[out] = (shape, b"".join(raw for _, raw in sorted(parts)))
    return rep, ref


def hf_load(path):
    """{name: (shape, bytes)} through Hugging Face's reader."""
    try:
        import torch  # noqa: F401
        from safetensors.torch import load_file

        return {k: (list(v.shape), v.contiguous().numpy().astype("<f4").tobytes()) for k, v in load_file(path).items()}
    except ImportError:
        from safetensors.numpy import load_file

        return {k: (list(v.shape), v.astype("<f4").tobytes()) for k, v in load_file(path).items()}


def check(args):
    if not HAVE_ST and np is None:
        print("skip: neither safetensors nor numpy is importable")
        return SKIP
    rep, ref = reference(args.inspect, args.with_optimizer)
    header, meta, data = parse_file(args.file)
    got = {n: (t["shape"], data[t["data_offsets"][0] : t["data_offsets"][1]]) for n, t in header.items()}
    readers = [("format parse", got)]
    if HAVE_ST:
        readers.append(("safetensors " + safetensors.__version__, hf_load(args.file)))
    for who, tensors in readers:
        if set(tensors) != set(ref):
            raise Mismatch(
                f"{who}: names differ: missing {sorted(set(ref) - set(tensors))}, extra {sorted(set(tensors) - set(ref))}"
            )
        for name, (shape, raw) in ref.items():
            if list(tensors[name][0]) != list(shape):
                raise Mismatch(f"{who}: {name} has shape {tensors[name][0]}, the checkpoint {shape}")
            if tensors[name][1] != raw:
                if np is not None:
                    a = np.frombuffer(tensors[name][1], "<f4")
                    b = np.frombuffer(raw, "<f4")
                    k = int(np.argmax(a.view("<u4") != b.view("<u4")))
                    raise Mismatch(f"{who}: {name} differs first at element {k}: {a[k]!r} vs {b[k]!r}")
                raise Mismatch(f"{who}: {name} differs from the checkpoint")
    if meta.get("format") != "pt":
        raise Mismatch(f"__metadata__ format is {meta.get('format')!r}, expected 'pt'")
    if meta.get("moe.step") != str(rep["step"]):
        raise Mismatch(f"__metadata__ moe.step is {meta.get('moe.step')!r}, the checkpoint's step {rep['step']}")
    if len(meta.get("moe.config", "")) != rep["config_yaml_bytes"]:
        raise Mismatch("__metadata__ moe.config is not the checkpoint's config YAML")
    nbytes = sum(len(raw) for _, raw in ref.values())
    print(
        f"safetensors_check: {len(ref)} tensors, {nbytes} bytes equal the checkpoint (step {rep['step']}) "
        f"through {', '.join(w for w, _ in readers)}"
    )
    return 0


def rewrite(args):
    if not HAVE_ST or np is None:
        print("skip: rewrite needs safetensors and numpy")
        return SKIP
    rename = lambda n: n if n.startswith("optim.") or n.startswith("state.") else args.prefix + n  # noqa: E731
    try:  # torch has every dtype, BF16 included
        import torch
        from safetensors.torch import load_file, save_file

        dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}[args.dtype]
        out = {rename(k): v.to(dt) for k, v in load_file(args.input).items()}
        save_file(out, args.output, metadata={"format": "pt"})
    except ImportError:
        from safetensors.numpy import load_file, save_file

        if args.dtype == "BF16":
            print("skip: BF16 needs torch")
            return SKIP
        dt = {"F32": np.float32, "F16": np.float16, "F64": np.float64}[args.dtype]
        out = {rename(k): v.astype(dt) for k, v in load_file(args.input).items()}
        save_file(out, args.output, metadata={"format": "np"})
    print(f"rewrote {len(out)} tensors as {args.dtype} into {args.output}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("file")
    c.add_argument("--inspect", required=True)
    c.add_argument("--with-optimizer", action="store_true")
    r = sub.add_parser("rewrite")
    r.add_argument("input")
    r.add_argument("output")
    r.add_argument("--dtype", default="F32", choices=["F32", "F16", "BF16", "F64"])
    r.add_argument("--prefix", default="")
    args = ap.parse_args()
    try:
        return check(args) if args.cmd == "check" else rewrite(args)
    except Mismatch as e:
        print(f"safetensors_check: MISMATCH: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
