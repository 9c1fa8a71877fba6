"""Ticket vs re-initialisation vs prune & fine-tune on CIFAR-10 at an equal budget
(seed 002, Liu et al. ICML 2021): VGG-19 (BN) or MobileNetV2, the learning rate
swept over 0.01, 0.05 and 0.1 as stages of one run. Per rate: 160 epochs of dense
pretraining (SGD, momentum 0.9, wd 5e-4, batch 128, lr x0.1 at 80 and 120, flip +
pad-4 crop), the one-shot global magnitude mask, then 160 epochs of each arm.

  python -m lottery_jax.main \
      --config=configs/ticket_vs_finetune_cifar10.py:vgg19,folder=../shared/datasets/cifar10-jpeg.zip \
      --workdir=runs/ticket_vs_finetune_vgg19_cifar10

The argument is the net (`vgg19`: the zoo's CIFAR VGG-19 with BatchNorm,
`jackpot_vgg19`; `mobilenet_v2`: torchvision's MobileNetV2, whose ImageNet strides
leave 1x1 feature maps on 32x32 inputs; a CIFAR stem is not in the zoo yet; `conv2`:
Frankle & Carbin's Conv-2, no BatchNorm, batch 60, no augmentation, 90% sparse), then
optionally `,folder=PATH` (without it TFDS cifar10) and, for `conv2` only, `,subset`.

`conv2,folder=...,subset` is the reduced scale RESULTS.md's CIFAR-10 evidence runs on 2
CPU cores (benchmarks/imp_results.py, runs `tvf_cifar10_s<seed>`, on the class-balanced
10k-image train subset of the IMP evidence, scored on the full 10k test set): per eta in
{0.01, 0.03, 0.1}, 3 epochs of the subset (498 steps at batch 60) of dense pretraining
with SGD (momentum 0.9, wd 5e-4, cosine to 0), the one-shot 90% global magnitude mask,
then 498 steps of each arm with the same schedule (3 epochs of 166 steps).

Measured (`,subset`, 2026-12-03, 2-core CPU shared with other jobs, 160-470 s a training,
about 50 min a seed; seeds 0, 1, 2, full 10k test set, mean over the seeds; RESULTS.md
has the spreads and the paired tests):

  eta    dense   ticket  re-init  prune & fine-tune  r(all)  r(kept)
  0.01   50.07%   52.90%   39.74%             55.33%   0.976    0.982
  0.03   57.19%   59.20%   51.16%             60.31%   0.907    0.917
  0.1    50.47%   53.53%   51.85%             52.09%   0.625    0.588

The full recipe (VGG-19, MobileNetV2) is not verified against the paper
(its full text was not available): its learning-rate grid, epochs and sparsities;
here 0.01 and 0.1 are the pair the lottery-ticket literature contrasts, the
sparsity is 80% (VGG-19) or 50% (MobileNetV2, already compact).

It has not run. Only the first stage's step time, from a smoke
of `:vgg19` (2026-12-03, the quiet 2-core CPU, model.conv="auto";
`"--config.ticket_vs_finetune.learning_rates=(0.1,)" --config.num_steps=20
--config.data.max_eval_examples=512` on the 10k-image subset zip of `python
benchmarks/imp_results.py subset`): 11.0 s a dense VGG-19 step at batch 128 (steps 5-15;
stopped there), about 10x what its FLOPs (305 GFLOP of convs a step) predict at this CPU's
GEMM rate. The cause: its four 3x3 convs on 2x2 maps, which XLA ran with swapped operands
at 0.6 GFLOP per CPU-second (30 of a gradient's 34 CPU-s); since 71755c9 "xla" computes
them as im2col, and the gradient at batch 128 takes 0.13x the CPU time (0.16x the wall
time) it took (BENCHMARKS.md "VGG-19 on the CPU", side by side on a busy machine).
Projected, not re-run: about 1.5-1.8 s a step on the quiet CPU, so one 160-epoch training
(62,500 steps) is about 1.1-1.3 CPU-days and the sweep's 12 trainings about 13-16 (it was
8 and 95). `:mobilenet_v2`, the same smoke run to the
end (all four stages, 20 steps each; 2026-12-03): 0.77 s a step at batch 128, so one
160-epoch training is about 13 hours and the sweep about 7 CPU-days; its 20-step
accuracies (9-12%) say only that every stage runs.
"""

from lottery_jax import recipes

# net -> (zoo model, one-shot sparsity)
NETS = {"vgg19": ("jackpot_vgg19", 0.8), "mobilenet_v2": ("mobilenet_v2", 0.5),
        "conv2": ("conv2", 0.9)}
# `,subset` (2-core CPU scale, conv2 only): epochs of the 10k-image subset per training
# (3 x 166 = 498 steps at batch 60) and the learning-rate sweep.
SUBSET_EPOCHS = 3.0
SUBSET_RATES = (0.01, 0.03, 0.1)


def get_config(arg: str = "vgg19"):
  net, *rest = arg.split(",")
  data_arg, options = recipes.split_options(rest, flags=("subset",))
  subset = "subset" in options
  if net not in NETS:
    raise ValueError(f"config argument {arg!r}: expected one of {sorted(NETS)}, "
                     "optionally followed by ',folder=PATH' (and ',subset' for conv2)")
  if subset and net != "conv2":
    raise ValueError(f"config argument {arg!r}: ',subset' is the reduced scale of "
                     "'conv2' only; drop it, or use 'conv2,folder=PATH,subset'")
  model, sparsity = NETS[net]
  c = recipes.cifar_pretrain(data_arg, model=model)
  c.experiment = "ticket_vs_finetune"
  c.num_epochs = 160.0
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "multistep"
  c.optimizer.milestones = (80, 120)
  c.sparsity = sparsity
  c.allocation = "global_magnitude"
  c.ticket_vs_finetune.learning_rates = (0.01, 0.05, 0.1)
  c.ticket_vs_finetune.sparse_epochs = 160.0
  c.eval_every_epochs = 20.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 1
  if net == "conv2":
    c.data.augment = False           # as Frankle & Carbin's Conv-2
    c.data.batch_size = 60
    c.data.eval_batch_size = 500
  if subset:
    c.num_epochs = SUBSET_EPOCHS
    c.ticket_vs_finetune.sparse_epochs = SUBSET_EPOCHS
    c.ticket_vs_finetune.learning_rates = SUBSET_RATES
    c.optimizer.schedule = "cosine"
    c.optimizer.milestones = ()
    c.eval_every_epochs = 0.0
    c.log_every_steps = 100
    c.checkpoint_every_steps = 250
  return c
