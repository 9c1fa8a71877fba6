"""Compare siblings_quick runs A, B (vmap, deterministic GPU ops) and C (sequential)."""
import glob, json, os, sys
import numpy as np
from safetensors.numpy import load_file

A, B, C = sys.argv[1:4]

def load(p):
  return load_file(p) if os.path.exists(p) else None

def maxdiff(x, y):
  return max(float(np.max(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)))) if x[k].size else 0.0 for k in x)

# A vs B: every stage's exported variables and every mask file, bitwise
for f in sorted(glob.glob(f"{A}/**/*.safetensors", recursive=True)):
  rel = os.path.relpath(f, A)
  x, y = load(f), load(os.path.join(B, rel))
  if y is None:
    print("A/B missing", rel); continue
  same = x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
  print(f"A==B bitwise {same} {rel}" + ("" if same else f" maxdiff {maxdiff(x, y):.3g}"))
# A vs C: shared bitwise; siblings stacked vs one stage each
def section(f):
  try: f()
  except Exception as e: print("failed:", f.__name__, repr(e))

def shared():
  x, y = load(f"{A}/shared/variables.safetensors"), load(f"{C}/shared/variables.safetensors")
  print("A==C shared bitwise", all(np.array_equal(x[k], y[k]) for k in x))

def sibs():
  v = load(f"{A}/siblings/variables.safetensors")
  print("vmapped export keys/shapes", [(k, v[k].shape) for k in list(v)[:3]])
  for i in range(4):
    y = load(f"{C}/sibling{i}/variables.safetensors")
    print("sequential keys/shapes", [(k, y[k].shape) for k in list(y)[:3]]) if i == 0 else None
    d = 0.0; scale = 0.0
    for k in y:
      xk = v[k][i] if v[k].shape != y[k].shape else v[k]
      d = max(d, float(np.max(np.abs(xk.astype(np.float64) - y[k]))))
      scale = max(scale, float(np.max(np.abs(y[k]))))
    print(f"sibling{i}: vmapped vs sequential max |diff| {d:.3g} (max |w| {scale:.3g})")

def masks():
  for n in ("union_s0.8", "intersection_s0.8", "one_shot_s0.8"):
    x, y = load(f"{A}/masks/{n}.safetensors"), load(f"{C}/masks/{n}.safetensors")
    diff = sum(int(np.sum(x[k] != y[k])) for k in x); tot = sum(x[k].size for k in x)
    print(f"mask {n}: A vs C entries differing {diff} of {tot}")

def summaries():
  for r in (A, B, C):
    d = json.load(open(f"{r}/summary.json"))
    print(r, [x["test_accuracy"] for x in d["per_sibling"]], d["overlap"]["mean_iou"],
          d["union"]["test_accuracy"], d["intersection"]["test_accuracy"], d["one_shot"]["test_accuracy"])

for f in (shared, sibs, masks, summaries):
  section(f)
