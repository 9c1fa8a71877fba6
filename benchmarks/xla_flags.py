"""Ranks XLA:CPU flag sets for the wide ResNet-32 steps, PyTorch as the yardstick.

  python benchmarks/xla_flags.py --repeats 3            # about 2 minutes per flag set

Each flag set runs `benchmarks/vs_pytorch.py --impls xla` in its own process (XLA
reads XLA_FLAGS once, at backend start), which times PyTorch's dense step and our
dense step, search step and forward in the same process, interleaved. Flag sets
are compared through their ratios to PyTorch's step of the same process, which
cancels most of the drift of a shared machine between processes. A flag set
that XLA rejects or that crashes is reported as such.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

FLAG_SETS = {
    "default": "",
    "ynnpack off (Eigen convs)": "--xla_cpu_experimental_ynn_fusion_type=",
    "oneDNN": "--xla_cpu_use_onednn=true",
    "xnnpack off": "--xla_cpu_use_xnnpack=false",
    "no multi-output fusion": "--xla_cpu_use_multi_output_fusion=false",
}


def run(flags: str, repeats: int) -> dict[str, float] | str:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
  proc = subprocess.run([sys.executable, os.path.join(HERE, "vs_pytorch.py"), "--impls",
                         "xla", "--repeats", str(repeats)], env=env, capture_output=True,
                        text=True, check=False)
  if proc.returncode:
    return "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
  out = {}
  for line in proc.stdout.splitlines():
    m = re.match(r"(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s", line)
    if m:
      out[m.group(1)] = float(m.group(2))
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--only", default="", help="comma-separated names of FLAG_SETS")
  a = ap.parse_args()
  names = a.only.split(",") if a.only else list(FLAG_SETS)
  print("| flag set | XLA_FLAGS | torch train ms | ours train ms | ours search ms | ours fwd ms "
        "| train / torch | search / torch | fwd / torch fwd |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name in names:
    r = run(FLAG_SETS[name], a.repeats)
    if isinstance(r, str):
      print(f"| {name} | `{FLAG_SETS[name]}` | {r} |||||||", flush=True)
      continue
    t, tf = r["torch/train"], r["torch/fwd"]
    tr, se, fw = r["jax[xla]/train"], r["jax[xla]/search"], r["jax[xla]/fwd"]
    print(f"| {name} | `{FLAG_SETS[name]}` | {t:.0f} | {tr:.0f} | {se:.0f} | {fw:.0f} | "
          f"{tr / t:.2f} | {se / t:.2f} | {fw / tf:.2f} |", flush=True)


if __name__ == "__main__":
  main()
