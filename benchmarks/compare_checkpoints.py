"""Compare two MOSMOS checkpoints tensor by tensor: ``python -m benchmarks.compare_checkpoints A.pt B.pt``.

Provenance (dates, commands, versions) is left out of the comparison, since it differs between any two runs,
except its loss history, which equal training must reproduce."""
import argparse

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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    args = p.parse_args(argv)
    print(compare(args.a, args.b))


if __name__ == "__main__":
    main()
