"""ukasan bench workload: json, re, dict and list churn (run with PYTHONMALLOC=malloc)."""
import json
import re
import sys

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
WORD = re.compile(r"[a-z]+(?:_[a-z0-9]+)*")
NAMES = ["alloc", "free", "shadow", "stack", "depot", "trace", "frame", "quarantine"]


def make(i, depth):
    if depth == 0:
        return {"id": i, "name": f"item_{i}_{NAMES[i % 8]}", "tags": [f"t{j}" for j in range(i % 6)]}
    return {
        "level": depth,
        "kind": NAMES[(i + depth) % 8],
        "child": make(i, depth - 1),
        "values": [i * j for j in range(5)],
    }


def flatten(doc, prefix, out):
    if isinstance(doc, dict):
        for k, v in doc.items():
            flatten(v, f"{prefix}.{k}" if prefix else k, out)
    elif isinstance(doc, list):
        for j, v in enumerate(doc):
            flatten(v, f"{prefix}[{j}]", out)
    else:
        out[prefix] = doc


total = 0
counts = {}
for i in range(N):
    doc = make(i, 14)
    text = json.dumps(doc, sort_keys=True)
    back = json.loads(text)
    flat = {}
    flatten(back, "", flat)
    for w in WORD.findall(text):
        counts[w] = counts.get(w, 0) + 1
    keys = sorted(flat, key=lambda k: (len(k), k))
    total += len(keys) + sum(len(str(flat[k])) for k in keys[:20])
    if i % 50 == 49:
        counts = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:100])
print(total, len(counts))
