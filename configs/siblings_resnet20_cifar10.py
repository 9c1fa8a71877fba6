"""Siblings at the paper's scale (seed 001; ALGORITHMS.md section 2): CIFAR-10
ResNet-20 with open_lth's `cifar_resnet_20` recipe (SGD lr 0.1, momentum 0.9, wd 1e-4,
batch 128, 160 epochs, lr x0.1 at epochs 80 and 120, pad-4 crop + flip), S=10
siblings in one vmapped program, shared epochs k in {0, 1, 2, 5, 10}, one-shot global
magnitude masks at the IMP densities 0.8^L (L = 1..10), union / intersection /
one-shot retrained from theta_k.

  python -m lottery_jax.main \
      --config=configs/siblings_resnet20_cifar10.py:folder=../shared/datasets/cifar10-jpeg.zip \
      --workdir=runs/siblings_r20

Sized for an accelerator: 10 siblings x 160 epochs, plus 3 x 10 retrainings per k.
On a 2-core CPU use fewer (`--config.siblings.count=4 --config.num_epochs=...`); on
several devices spread the siblings with `--config.siblings.mesh_axis=<devices>`
(a divisor of the count). Without `:folder=` it reads TFDS cifar10.

`,subset` after the folder is the reduced scale RESULTS.md's CIFAR-10 siblings
evidence runs at on a busy 2-core CPU (benchmarks/siblings_results.py, runs
`cifar10_s<seed>`, on the class-balanced 10k-image train subset of the CIFAR IMP
evidence, `imp_results.py subset`):

  python -m lottery_jax.main \
      --config=configs/siblings_resnet20_cifar10.py:folder=runs/cifar/cifar10-train10k.zip,subset \
      --workdir=runs/siblings/cifar10_s0

ResNet-20 at a quarter of its width (stages of 4/8/16 channels), the same
recipe (SGD 0.1, momentum 0.9, wd 1e-4, batch 128, crop + flip) compressed to one
epoch of the subset (78 steps, lr x0.1 at 50% and 75%), S = 4 siblings
(`model.conv="unrolled"`), k in {0, 0.125, 0.25, 0.5} epochs (0, 10, 20, 39 steps),
one-shot masks at 80% and 90%, union / intersection / one-shot retrained from
theta_k; scored on a fixed random 2,000 of the 10k test images (0.05 points an image).
`,epochs=E` after `,subset` trains E epochs of the subset instead of one (milestones at
50% and 75% of E); the shared-epoch grid is then set on the command line
(`--config.siblings.shared_epochs_sweep=...`, every k below E). Measured with
`,subset,epochs=5`, k in {0, 0.25, 1, 2}, the siblings one after another
(`siblings.vmap=False --config.model.conv=xla`; benchmarks/siblings_results.py run
`cifar10_e5_s0`, `_s1`, `_s2`, 2026-12-03/04): 50 min for the whole sweep on 2 quiet
cores (seed 1; 87-91 min beside other jobs), dense siblings at 38-40%; seeds 0-2, mean ±
std: overlap at k = 0 0.61 ± 0.02 at 80% (chance 0.15), 0.67, 0.78, 0.88 at k = 0.25, 1,
2; union and intersection within 1 point of one-shot at k = 1 and 2, and 3-4.5 points
behind it at k = 0 in every seed (RESULTS.md has the paired tests).
Measured (2026-12-03, 2 cores shared with a training run and other jobs, load average
10-28, nice 19): 9-17 s a vmapped step of the 4 siblings (35 s at full width, 9 s at
quarter width in a smoke at load 15), 2-5 min per stage before its first step (data,
first evaluation, compilation); the siblings of every k (phase 1: 7 stages, 243 vmapped
steps) 77 min; the 24 retrainings (1,458 single-copy steps) not yet timed.
"""

from lottery_jax import recipes

# `,subset` (2-core CPU scale): epochs of the 10k-image subset per training, the
# shared-epoch grid k and the retrained sparsities.
SUBSET_WIDTHS = (4, 8, 16)
SUBSET_EPOCHS = 1.0
SUBSET_K = (0.0, 0.125, 0.25, 0.5)
SUBSET_SPARSITIES = (0.8, 0.9)
SUBSET_EVAL_EXAMPLES = 2000


def get_config(arg: str = ""):
  data_arg, options = recipes.split_options(arg.split(",") if arg else [],
                                            flags=("subset",), valued=("epochs",))
  subset = "subset" in options
  if "epochs" in options and not subset:
    raise ValueError(f"config argument {arg!r}: 'epochs=E' sets the length of the "
                     "',subset' scale; add ',subset', or set --config.num_epochs instead")
  try:
    subset_epochs = float(options.get("epochs", SUBSET_EPOCHS))
  except ValueError:
    subset_epochs = -1.0
  if not subset_epochs > 0:
    raise ValueError(f"config argument {arg!r}: 'epochs=E' needs a number E > 0 "
                     "(epochs of the 10k-image subset per training), e.g. 'epochs=5'")
  c = recipes.cifar_pretrain(data_arg, model="cifar_resnet20")
  c.experiment = "siblings"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "multistep"
  c.optimizer.milestones = (80, 120)
  c.optimizer.decay_factor = 0.1
  c.data.batch_size = 128
  c.num_epochs = 160.0
  c.siblings.count = 10
  c.siblings.shared_epochs_sweep = (0.0, 1.0, 2.0, 5.0, 10.0)
  c.siblings.sparsities = tuple(round(1 - 0.8 ** level, 6) for level in range(1, 11))
  c.sparsity = c.siblings.sparsities[0]
  c.eval_every_epochs = 20.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  if subset:
    c.model.conv = "unrolled"    # one ordinary conv per sibling under vmap (CPU)
    c.model.kwargs.widths = SUBSET_WIDTHS
    c.num_epochs = subset_epochs
    c.optimizer.milestones = tuple(subset_epochs * f for f in (0.5, 0.75))
    c.siblings.count = 4
    c.siblings.shared_epochs_sweep = SUBSET_K
    c.siblings.sparsities = SUBSET_SPARSITIES
    c.sparsity = SUBSET_SPARSITIES[0]
    c.data.max_eval_examples = SUBSET_EVAL_EXAMPLES
    c.eval_every_epochs = 0.0
    c.analysis.enabled = False
    c.log_every_steps = 20
    c.checkpoint_every_steps = 50
    c.keep_checkpoints = 1
    c.tensorboard = False
  return c
