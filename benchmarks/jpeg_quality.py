"""How much does JPEG compression cost a CIFAR-10 ResNet-20 here? (issue 12.1)

The only CIFAR-10 on this machine, ../shared/datasets/cifar10-jpeg.zip, is JPEG at IJG
quality 75 with 4:2:0 chroma subsampling (colour stored at 16x16), and 91.25% (He et
al.) was measured on the lossless images. No lossless copy can be had here, so the cost
of the zip's own compression cannot be measured directly. What can be: the cost of
compressing it further. This script re-encodes every train and test image of the zip
at quality Q (4:2:0, PIL) and trains the same ResNet-20 on each version with the same
short recipe, scored on the full test set at the same quality:

* `q75_s<seed>`: the zip as it is (the baseline; seeds 0 and 1 give the seed spread);
* `q95_s0`: re-encoded at quality 95, the control: re-encoding by itself should cost
  nothing measurable, or the re-encode, not the quality, is what the others measure;
* `q50_s0`, `q30_s0`: stronger compression.

The recipe is cifar_results.py's reduced pretraining (10 epochs of the 50k train split,
cosine from lr 0.1, Nesterov, wd 5e-4, batch 128, crop + flip) with PyTorch's CPU
convolutions (`--config.model.conv=torch`, opt-in and recorded in config.json; needs the
`torch` extra), 29-37 minutes a run on the 2-core VM (q30_s0 1,725 s, q50_s0 1,999 s,
q95_s0 2,224 s, 2026-12-03, one run at a time). How accuracy falls from 75 to 50 (and 30) says what a
step of further compression costs this network; what the step from lossless to 75 cost
it can only be inferred from that: an extrapolation, labelled as such where it is used.
A proxy bears on it: on 32x32 tiles of photographs that install with scikit-learn
and matplotlib, shrunk by box averaging so that they stand in for lossless images,
`proxy` compares the distortion (PSNR) of the step lossless -> 75 with that of the
steps 75 -> 95/50/30 (benchmarks/results/jpeg/proxy.json; a handful of photographs,
not the CIFAR-10 originals).

  python benchmarks/jpeg_quality.py reencode        # runs/cifar/cifar10-q{95,50,30}.zip, ~25 s each
  python benchmarks/jpeg_quality.py proxy           # proxy.json, a second
  python benchmarks/jpeg_quality.py run             # the runs not yet stored, resumable
  python benchmarks/jpeg_quality.py collect         # the table (PSNR and accuracy)

Finished summaries are copied to benchmarks/results/jpeg/ (committed); `collect --root
benchmarks/results/jpeg` rebuilds the table from them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _evidence as ev  # noqa: E402
from _evidence import HERE, REPO  # noqa: E402

SOURCE = os.path.join("..", "shared", "datasets", "cifar10-jpeg.zip")
QUALITIES = (95, 50, 30)
STORE = os.path.join(HERE, "results", "jpeg")


def zip_for(quality: int) -> str:
  """The data of a quality, relative to the repository root (75: the source zip)."""
  return SOURCE if quality == 75 else os.path.join("runs", "cifar", f"cifar10-q{quality}.zip")


def _decode(data: bytes) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _encode(img: np.ndarray, quality: int) -> bytes:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  out = io.BytesIO()
  Image.fromarray(img).save(out, format="JPEG", quality=quality, subsampling=2)
  return out.getvalue()


def reencode(src: str, dst: str, quality: int) -> float:
  """Writes `dst`: every image of `src` decoded and saved again as JPEG at `quality`
  (4:2:0), same names and order; other entries copied. Returns the mean PSNR (dB) of
  the re-encoded images against the decoded source images."""
  mse = []
  tmp = dst + ".tmp"
  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
    for name in zin.namelist():
      data = zin.read(name)
      if name.lower().endswith((".jpg", ".jpeg")):
        img = _decode(data)
        data = _encode(img, quality)
        mse.append(np.mean((_decode(data).astype(np.float64) - img) ** 2))
      zout.writestr(name, data)
  os.replace(tmp, dst)
  m = np.asarray(mse)
  return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(m, 1e-12))))


def runs() -> dict[str, list[str]]:
  import cifar_results  # noqa: E402  (benchmarks/ is on sys.path)
  out = {}
  for quality, seeds in ((75, (0, 1)), *((q, (0,)) for q in QUALITIES)):
    for seed in seeds:
      out[f"q{quality}_s{seed}"] = (cifar_results.pretrain_args(zip_for(quality))
                                    + ["--config.model.conv=torch", f"--config.seed={seed}",
                                       "--config.progress_bar=False"])
  return out


def command(name: str, root: str) -> list[str]:
  return ev.command(runs()[name], root, name)


PSNR_RECORD = os.path.join(STORE, "psnr.json")


def _psnrs() -> dict[str, float]:
  """The recorded PSNR of each re-encoded quality ({} before the first `reencode`)."""
  if not os.path.exists(PSNR_RECORD):
    return {}
  with open(PSNR_RECORD) as f:
    return json.load(f)


def write_zips(qualities=QUALITIES) -> None:
  """Re-encodes the source zip at each quality whose zip is missing; records the PSNRs
  in benchmarks/results/jpeg/psnr.json (committed)."""
  psnr = _psnrs()
  for q in qualities:
    path = os.path.join(REPO, zip_for(q))
    if not os.path.exists(path):
      psnr[str(q)] = reencode(os.path.join(REPO, SOURCE), path, q)
      print(f"wrote {path}: PSNR {psnr[str(q)]:.2f} dB against the quality-75 source")
  os.makedirs(STORE, exist_ok=True)
  with open(PSNR_RECORD, "w") as f:
    json.dump(psnr, f, indent=1)


def run(names, root: str) -> None:
  write_zips()
  ev.run(names, root, command, say_done=False,
         after=lambda r, n: ev.store(r, n, STORE, ("summary.json", "config.json")))


PROXY_RECORD = os.path.join(STORE, "proxy.json")


def proxy_images() -> list[str]:
  """Photographs that install with the packages here: scikit-learn's two sample images
  and matplotlib's portrait of Grace Hopper (all stored as high-quality JPEG)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  import sklearn.datasets  # pylint: disable=import-outside-toplevel
  sk = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
  mpl = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
  return [os.path.join(sk, "china.jpg"), os.path.join(sk, "flower.jpg"),
          os.path.join(mpl, "grace_hopper.jpg")]


def proxy_distortion(paths, factor: int = 4) -> dict:
  """The step that cannot be measured on CIFAR-10 here (lossless -> quality 75) beside
  the steps that can (75 -> 95, 50, 30), on stand-in images: each photograph shrunk
  `factor`-fold by box averaging (which averages its own JPEG artefacts away) and cut
  into 32x32 tiles. Returns the mean PSNR (dB) of each step and the tile count. Where
  the tiles' 75 -> 50 step matches CIFAR's measured one, their lossless -> 75 step is
  the stand-in for CIFAR's: a proxy, not a measurement of the zip."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  tiles = []
  for path in paths:
    with Image.open(path) as im:
      im = im.convert("RGB")
      img = np.asarray(im.resize((im.width // factor, im.height // factor), Image.BOX))
    for y in range(0, img.shape[0] - 31, 32):
      for x in range(0, img.shape[1] - 31, 32):
        tiles.append(np.ascontiguousarray(img[y:y + 32, x:x + 32]))

  def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))

  def at(img, quality):
    return _decode(_encode(img, quality))

  out = {"tiles": len(tiles), "factor": factor,
         "lossless->75": float(np.mean([psnr(t, at(t, 75)) for t in tiles]))}
  for q in QUALITIES:
    out[f"75->{q}"] = float(np.mean([psnr(at(t, 75), at(at(t, 75), q)) for t in tiles]))
  return out


def write_proxy() -> dict:
  """Measures proxy_distortion at 4x and 8x shrinking into proxy.json (committed)."""
  rec = {f"x{f}": proxy_distortion(proxy_images(), f) for f in (4, 8)}
  os.makedirs(STORE, exist_ok=True)
  with open(PROXY_RECORD, "w") as f:
    json.dump(rec, f, indent=1)
  return rec


def collect(root: str) -> str:
  psnr = _psnrs()
  lines = ["| data | PSNR vs the quality-75 source (dB) | seed | test accuracy (full 10k) |",
           "|---|---|---|---|"]
  for name in runs():
    s = ev.load(name, os.path.join(REPO, root), STORE)
    quality, seed = name[1:].split("_s")
    acc = "-" if s is None else f"{100 * s['final_eval']['accuracy']:.2f}%"
    p = "(source)" if quality == "75" else (f"{psnr[quality]:.2f}" if quality in psnr else "-")
    lines.append(f"| quality {quality} | {p} | {seed} | {acc} |")
  if os.path.exists(PROXY_RECORD):
    with open(PROXY_RECORD) as f:
      proxy = json.load(f)
    steps = ["lossless->75"] + [f"75->{q}" for q in QUALITIES]
    lines += ["", "Proxy, not CIFAR-10: mean PSNR (dB) of each JPEG step on 32x32 tiles of "
              "photographs shrunk by box averaging (`proxy`):", "",
              "| shrink | tiles | " + " | ".join(steps) + " |",
              "|---|---|" + "---|" * len(steps)]
    for key, rec in proxy.items():
      lines.append(f"| {key} | {rec['tiles']} | "
                   + " | ".join(f"{rec[k]:.2f}" for k in steps) + " |")
  return "\n".join(lines)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("action", choices=["commands", "reencode", "proxy", "run", "collect"])
  ap.add_argument("names", nargs="*")
  ap.add_argument("--root", default=os.path.join("runs", "jpeg_quality"),
                  help="relative paths are relative to the repository root")
  args = ap.parse_args()
  if args.action == "commands":
    ev.print_commands(ev.select(args.names, runs()), args.root, command)
  elif args.action == "reencode":
    write_zips()
  elif args.action == "proxy":
    print(json.dumps(write_proxy(), indent=1))
  elif args.action == "run":
    if args.names:
      names = ev.select(args.names, runs())
    else:   # the runs not stored yet (a workdir under runs/ need not outlive a session)
      names = [n for n in runs() if ev.load(n, STORE) is None]
      print("stored already, not run again:",
            ", ".join(n for n in runs() if n not in names) or "none")
    run(names, args.root)
  else:
    print(collect(args.root))


if __name__ == "__main__":
  main()
