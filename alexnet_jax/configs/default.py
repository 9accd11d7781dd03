"""The default run: the paper's network and optimizer on the embedded offline dataset.

    python -m alexnet_jax.main --workdir runs/

Sized for a 2-core laptop CPU: 748 steps of batch 16, 7 min 07 s to 7 min 50 s per run on the
project's 2-core VM (2026-12-01, 0.55-0.61 s per step; 8 min 46 s to 9 min 34 s the evening
before, at 0.68-0.75: its speed drifts by 10-30% over a day; README.md's seed table).
Differences from the paper (``imagenet.py``), and why:
- data: the embedded shapes dataset (10 classes, 3000 training and 500 validation images),
  prepared on first use, with its own mean and colour PCA (computed by
  ``alexnet_jax.data_stats``, shipped in ``alexnet_jax.datasets.shapes``);
- init_scheme 'caffe': with the paper's init the loss sits at ln(num_classes) for longer than
  this short run lasts (the known pitfall; Caffe's fix);
- batch 16 (the paper's 128 gives 23 updates per epoch here): its extra updates make more
  progress per image once the network leaves the ln(10) plateau. Seed 3, 4 epochs, the same
  per-image rates (batch 32 at 0.01, then 0.004): 79.0% top-1 against 91.6% at batch 16. In
  the main job batch 32 trained about 10% more images per second (21.6 against 19.5-20 on a
  slow hour; the synthetic-batch benchmark says 30 against 22), not enough to make up for it;
- 4 epochs: rate 0.005 for two, then 0.002 for one and 0.0008 for the last (the paper's 0.01
  divided by 10 on plateaus; see below for why the rates differ): a 10-minute run has too few
  evaluations for the plateau rule;
- centre-crop evaluation every epoch (10-crop is available with --config.eval.ten_crop=True).

Why these rates and 4 epochs (2-core Intel Xeon, 2026-11-30; issue 16). The network leaves the
ln(10) plateau after 3200-5400 training images in the runs that went past it (rates 0.005 to
0.02, batch 16 and 32), and no setting tried left it sooner: a warm-up to twice the rate, rate
0.03, batch 8, LeCun and Glorot inits were still on it when stopped at 1760-2880 images; Caffe's
conv1 with LeCun for the later layers at rate 0.002 was still at loss 2.30 after 4480 images;
He on these raw 0..255 inputs gave NaN within 6 steps, even with conv1 scaled by the input's
std. That the exit does not follow the rate fits an exit limited by how much class signal each
image's gradient carries, not by the step size; ``experiments/init_scales.py`` shows the
starting scales. So the recipe changes what happens after the exit. Rates, measured per seed
with the epoch-2 checkpoint kept and only the third epoch's rate changed (top-1 after epoch 3):

  rates (epochs 1-2 -> 3)   seed 0 (exit ~3200-4000 images)   seed 1 (exit ~3700)
  0.01 -> 0.001 (before)    83.4%                             78.0%
  0.005 -> 0.0005           78.4%                             -
  0.005 -> 0.001            85.8% (87.2% with a 4th epoch)    79.2%
  0.005 -> 0.002            85.4%                             81.0%
  0.005 -> 0.003            -                                 79.0%

After the exit a rate of 0.005 lowers the error at least as fast as 0.01 (seed 0: 52.6% after
epoch 2 from a later exit, against 53.0%), and the later epochs gain most at 0.001-0.002. With 3
epochs (9000 images) the seeds reached 76.8-85.4%: a seed that leaves the plateau late has too
few images left. The 4th epoch is what lifts them; seed 3, the worst at 3 epochs (exit ~3700
images), evaluated along its 4th epoch at 0.002: 76.8% after epoch 3 (step 561), 86.4% at step
610, 84.8% at 660, 89.8% at 710, 91.6% after epoch 4 (748). Shorter ways to the same number of
images were worse for seed 3: 4 epochs of the first 2800 training images
(``data.train_split='train[:2800]'``, 700 steps) left the plateau later (~4600 images) and
reached 82.2%; batch 32 (above) 79.0%. Over seeds 0-4 the 4th epoch at 0.002 took every seed
past 85% (87.2-94.6%, from 76.8-85.4% after 3 epochs), but with a spread of 7.4 points, over
issue 16's 5. The 4th epoch at 0.0008 instead (each seed's run resumed from its epoch-3
checkpoint with only that rate changed; a resume is bit-identical to an uninterrupted run):

  seed                      0       1       2       3       4       spread
  4th epoch at 0.002        94.6%   93.4%   87.2%   91.6%   92.2%   7.4 points
  4th epoch at 0.0008       95.2%   94.8%   94.0%   91.2%   96.0%   4.8 points

README.md's seed table: the five seeds of this recipe run from the start, one after another
(2026-12-01, 01:45-02:22): 95.2%, 94.8%, 94.0%, 91.2%, 96.0% (equal to the resumed runs above to
every digit), in 7 min 07.2 s to 7 min 50.3 s each (0.55-0.61 s per step), within issue 16's
8 minutes. The same five runs on 2026-11-30, 22:13-22:59, gave the same errors in 8 min 46 s to
9 min 34 s (0.68-0.75 s per step), and a new user's first run with the dataset prepared first
took 8 min 22 s (0.63 s per step): the 8 minutes need the VM's faster hours, about 0.6 s per step
or less. The table's commit set glibc's malloc in the main job (withdrawn since: not reliably
faster, experiments/PERF.md attempt 15); the allocator changes no number.
"""
from alexnet_jax.configs import imagenet
from alexnet_jax.datasets import shapes


def get_config():
  c = imagenet.get_config()
  c.data.source = 'embedded'
  c.data.name = shapes.NAME
  c.data.mean_rgb = shapes.MEAN_RGB
  c.data.pca_eigval = shapes.PCA_EIGVAL
  c.data.pca_eigvec = shapes.PCA_EIGVEC
  c.data.shuffle_buffer = 4096
  c.data.cache = True
  c.data.prefetch = 2  # a CPU trains ~20 images/s: two host batches ahead are plenty
  c.model.init_scheme = 'caffe'
  c.batch_size = 16
  c.num_epochs = 4
  c.optim.learning_rate = 0.005
  c.optim.lr_policy = 'steps'
  c.optim.step_epochs = (2, 3)
  c.optim.step_factor = 0.4  # 0.005 -> 0.002 for the 3rd epoch -> 0.0008 for the 4th
  c.eval.ten_crop = False
  c.eval.batch_size = 64
  # Saved at the end of each epoch (3 minutes apart here); a step-interval save on top would
  # add 0.5 GB of writes (parameters and momentum) each time on a 10-minute run.
  c.checkpoint.every_steps = 1000
  c.log_every_steps = 10
  return c
