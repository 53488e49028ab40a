"""Compare two MOSMOS checkpoints tensor by tensor (usage: python -m benchmarks.compare_checkpoints A.pt B.pt).

Provenance (dates, commands, versions) is reported, not compared: it differs between any two runs."""
import sys

import torch


def flat(d, p=""):
    out = {}
    for k, v in d.items():
        key = f"{p}{k}"
        if isinstance(v, dict): out.update(flat(v, key + "."))
        else: out[key] = v
    return out
a, b = (flat(torch.load(f, map_location="cpu", weights_only=True)) for f in sys.argv[1:3])
tensors = [k for k in a if isinstance(a[k], torch.Tensor)]
diff = [k for k in tensors if k not in b or not torch.equal(a[k], b[k])]
maxabs = max([(a[k] - b[k]).abs().max().item() for k in diff if k in b and a[k].shape == b[k].shape] or [0.0])
other = [k for k in a if k not in tensors and not k.startswith("provenance") and a[k] != b.get(k)]
print(f"{sys.argv[1]} vs {sys.argv[2]}: {len(tensors)} tensors, {len(diff)} differ (max |diff| {maxabs:.3g}); "
      f"keys only in one: {sorted(set(a) ^ set(b))}; non-tensor entries that differ: {other}")
for k in ("provenance.history",):
    print(" ", k, a.get(k) == b.get(k))
