"""The paper exactly: ImageNet (ILSVRC-2012) through TFDS, batch 128, SGD 0.01, ~90 epochs.

    python -m alexnet_jax.main --workdir runs/imagenet --config alexnet_jax/configs/imagenet.py \
        --config.data.manual_dir=/path/with/ILSVRC2012_tars

Every number of the recipe (Krizhevsky, Sutskever and Hinton 2012, sections 3-5) lives here.
"""
import ml_collections

from alexnet_jax.datasets import imagenet_stats


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = _model()
  c.data = _data()
  _training(c)
  c.eval = _eval()
  _checkpoints_and_logging(c)
  c.mesh = _mesh()
  return c


def _model() -> ml_collections.ConfigDict:
  """The network (section 3): the paper's defaults of alexnet_jax.model.AlexNet."""
  m = ml_collections.ConfigDict()
  # '' is 'paper' (or init_from's file's preset); 'bvlc', 'caffenet', 'torchvision' train those
  # networks (alexnet_jax.model.PRESETS); the fields below apply on top where they differ.
  m.preset = ''
  m.num_classes = 0            # 0: take the class count from the dataset (1000 here)
  m.dropout_rate = 0.5         # "dropout ... with probability 0.5" on fc6, fc7
  m.use_lrn = True
  m.lrn_after_pool = False     # the paper: conv -> ReLU -> LRN -> pool
  m.lrn_size = 5               # n
  m.lrn_k = 2.0                # k
  m.lrn_alpha = 1e-4           # alpha (a sum of squares, not divided by n)
  m.lrn_beta = 0.75            # beta
  m.init_scheme = 'paper'      # N(0, 0.01) weights; bias 1 in conv2/4/5, fc6/7
  m.dtype = 'auto'             # compute dtype: 'auto' = bfloat16 on GPU/TPU, float32 on CPU
                               # (parameters are float32 either way)
  return m


def _data() -> ml_collections.ConfigDict:
  """The data (section 4.1): 256 shorter side, central 256x256, random 227 crops and flips, PCA
  colour noise with std 0.1, mean subtraction; 10-crop test."""
  d = ml_collections.ConfigDict()
  d.source = 'imagenet2012'
  d.name = 'imagenet2012'
  d.data_dir = ml_collections.FieldReference(None, field_type=str)
  d.manual_dir = ml_collections.FieldReference(None, field_type=str)
  d.folder = ''
  d.val_fraction = 0.1
  d.train_split = 'train'
  d.eval_split = 'validation'
  d.resize_size = 256
  d.crop_size = 227
  # ImageNet's statistics in [0, 1] pixel units (fb.resnet.torch's published values).
  d.mean_rgb = imagenet_stats.MEAN_RGB
  d.pca_eigval = imagenet_stats.PCA_EIGVAL
  d.pca_eigvec = imagenet_stats.PCA_EIGVEC
  d.pca_alpha_std = 0.1
  d.stats_file = ''             # a JSON from `python -m alexnet_jax.data_stats` overrides
  d.input_scale = 255.0         # the net sees raw 0..255 pixel units minus the mean
  d.warp = False                # True: the whole image resized to 256x256 (Caffe's)
  d.preprocess = ''             # a preset's name: model.preprocess(name) replaces the
                                     # mean and scale above (set from init_from's weights)
  d.shuffle_buffer = 16384
  d.num_parallel_calls = -1     # AUTOTUNE
  d.cache = False
  # A copy made by `python -m alexnet_jax.datasets.prepared` (the paper's 256x256 JPEGs, read at
  # random); when set, training and evaluation read it instead of the source above.
  d.prepared_dir = ''
  d.prefetch = 8                # host batches ready ahead: uint8 crops, 20 MB at batch 128
  d.device_prefetch = 2         # batches already on the devices when a step starts
  d.threadpool_size = 0
  return d


def _training(c: ml_collections.ConfigDict) -> None:
  """Training (section 5): batch, epochs, the paper's SGD and its learning-rate rule."""
  c.batch_size = 128                 # global, whatever the device count
  c.num_epochs = 90                  # "roughly 90 cycles through the training set"
  c.max_steps = -1                   # -1: num_epochs decides
  # Imported weights to start from (any file alexnet_jax.weights.load reads): every layer,
  # fc8 re-initialised if the class count differs; the preset and preprocessing follow the file.
  c.init_from = ''
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 0.01       # "initialized at 0.01"
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0005
  c.optim.decay_biases = False       # cuda-convnet and Caffe decay the weights only
  c.optim.lr_policy = 'plateau'      # "divide by 10 when the validation error rate stopped
  c.optim.plateau_patience = 2       #  improving", "reduced three times"
  c.optim.plateau_factor = 0.1
  c.optim.plateau_max_decays = 3
  c.optim.plateau_min_delta = 0.0
  c.optim.step_epochs = (30, 60, 80)  # for lr_policy='steps'
  c.optim.step_factor = 0.1


def _eval() -> ml_collections.ConfigDict:
  """Evaluation (section 4.1: "averaging the predictions ... on the ten patches")."""
  e = ml_collections.ConfigDict()
  e.every_epochs = 1
  e.ten_crop = True
  e.batch_size = 128
  e.max_batches = -1            # -1: the whole validation split
  return e


def _checkpoints_and_logging(c: ml_collections.ConfigDict) -> None:
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 2000
  c.checkpoint.keep = 3              # the last k, and the best by validation error
  c.checkpoint.async_save = True
  c.log_every_steps = 50
  c.progress_bar = True


def _mesh() -> ml_collections.ConfigDict:
  """Devices: the paper's two towers on a (data, model) mesh; -1 = all remaining devices."""
  mesh = ml_collections.ConfigDict()
  mesh.data = -1
  mesh.model = 1
  mesh.layout = 'towers'             # or 'one_weird_trick' (Krizhevsky 2014)
  return mesh
