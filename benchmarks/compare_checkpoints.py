"""Compare two MOSMOS checkpoints tensor by tensor: ``python -m benchmarks.compare_checkpoints A.pt B.pt``.

Provenance (dates, commands, versions) is left out of the comparison, since it differs between any two runs,
except its loss history, which equal training must reproduce.

With ``--start S.pt`` (the common initialisation of both runs) it also says how far each part of the
model moved in each run and in which direction: how the tag-weight question of docs/benchmarks.md was
measured (does ``--tag-weight 10`` move the tag decoder further than weight 1?).
"""
import argparse
import math

import torch


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b.c": leaf}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def compare(path_a: str, path_b: str) -> str:
    a, b = (flatten(torch.load(p, map_location="cpu", weights_only=True)) for p in (path_a, path_b))
    tensors = [k for k, v in a.items() if isinstance(v, torch.Tensor)]
    differ = [k for k in tensors if k not in b or not torch.equal(a[k], b[k])]
    max_abs = max((float((a[k] - b[k]).abs().max()) for k in differ if k in b and a[k].shape == b[k].shape),
                  default=0.0)
    others = [k for k in a if k not in tensors and not k.startswith("provenance") and k in b and a[k] != b[k]]
    history = a.get("provenance.history") == b.get("provenance.history")
    return (f"{path_a} vs {path_b}: {len(tensors)} tensors, {len(differ)} differ (max |diff| {max_abs:.3g}); "
            f"keys only in one: {sorted(set(a) ^ set(b))}; non-tensor entries that differ: {others}; "
            f"loss history equal: {history}")


def update_sizes(start: str, path_a: str, path_b: str) -> dict:
    """Per top-level part (encoder, tag_decoder, projections, ...): the norm of each run's update
    from ``start`` over the part's floating-point tensors, their ratio (b / a) and cosine."""
    s, a, b = (flatten(torch.load(p, map_location="cpu", weights_only=True)) for p in (start, path_a, path_b))
    sums: dict = {}
    for key, v in s.items():
        if (not isinstance(v, torch.Tensor) or not v.is_floating_point() or key.startswith("provenance")
                or key not in a or key not in b or a[key].shape != v.shape or b[key].shape != v.shape):
            continue
        da, db = (a[key] - v).double(), (b[key] - v).double()
        acc = sums.setdefault(key.split(".", 1)[0], [0, 0.0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += float((da * da).sum())
        acc[2] += float((db * db).sum())
        acc[3] += float((da * db).sum())
    out = {}
    for part, (n, aa, bb, ab) in sums.items():
        na, nb = math.sqrt(aa), math.sqrt(bb)
        out[part] = {"tensors": n, "update_a": na, "update_b": nb, "ratio": nb / na if na else math.inf,
                     "cosine": ab / (na * nb) if na and nb else 0.0}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--start", help="the common initialisation of A and B: print each part's update size")
    args = p.parse_args(argv)
    print(compare(args.a, args.b))
    if args.start:
        for part, r in update_sizes(args.start, args.a, args.b).items():
            print(f"{part}: {r['tensors']} tensors, |update| A {r['update_a']:.4f}, B {r['update_b']:.4f}, "
                  f"B/A {r['ratio']:.3f}, cosine {r['cosine']:.3f}")


if __name__ == "__main__":
    main()
