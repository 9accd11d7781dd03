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

  # The network (section 3): the paper's defaults of alexnet_jax.model.AlexNet.
  c.model = ml_collections.ConfigDict()
  c.model.num_classes = 0            # 0: take the class count from the dataset (1000 here)
  c.model.dropout_rate = 0.5         # "dropout ... with probability 0.5" on fc6, fc7
  c.model.use_lrn = True
  c.model.lrn_after_pool = False     # the paper: conv -> ReLU -> LRN -> pool
  c.model.lrn_size = 5               # n
  c.model.lrn_k = 2.0                # k
  c.model.lrn_alpha = 1e-4           # alpha (a sum of squares, not divided by n)
  c.model.lrn_beta = 0.75            # beta
  c.model.init_scheme = 'paper'      # N(0, 0.01) weights; bias 1 in conv2/4/5, fc6/7
  c.model.dtype = 'auto'             # compute dtype: 'auto' = bfloat16 on GPU/TPU, float32 on CPU
                                     # (parameters are float32 either way)

  # The data (section 4.1): 256 shorter side, central 256x256, random 227 crops and flips, PCA
  # colour noise with std 0.1, mean subtraction; 10-crop test.
  c.data = ml_collections.ConfigDict()
  c.data.source = 'imagenet2012'
  c.data.name = 'imagenet2012'
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.manual_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.folder = ''
  c.data.val_fraction = 0.1
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.resize_size = 256
  c.data.crop_size = 227
  # ImageNet's statistics in [0, 1] pixel units (fb.resnet.torch's published values).
  c.data.mean_rgb = imagenet_stats.MEAN_RGB
  c.data.pca_eigval = imagenet_stats.PCA_EIGVAL
  c.data.pca_eigvec = imagenet_stats.PCA_EIGVEC
  c.data.pca_alpha_std = 0.1
  c.data.stats_file = ''             # a JSON from `python -m alexnet_jax.data_stats` overrides
  c.data.input_scale = 255.0         # the net sees raw 0..255 pixel units minus the mean
  c.data.warp = False                # True: the whole image resized to 256x256 (Caffe's)
  c.data.preprocess = ''             # a preset's name: model.preprocess(name) replaces the
                                     # mean and scale above (set from init_from's weights)
  c.data.shuffle_buffer = 16384
  c.data.num_parallel_calls = -1     # AUTOTUNE
  c.data.cache = False
  # A copy made by `python -m alexnet_jax.datasets.prepared` (the paper's 256x256 JPEGs, read at
  # random); when set, training and evaluation read it instead of the source above.
  c.data.prepared_dir = ''
  c.data.prefetch = 8                # host batches ready ahead: uint8 crops, 20 MB at batch 128
  c.data.device_prefetch = 2         # batches already on the devices when a step starts
  c.data.threadpool_size = 0

  # Training (section 5).
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

  # Evaluation (section 4.1: "averaging the predictions ... on the ten patches").
  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 1
  c.eval.ten_crop = True
  c.eval.batch_size = 128
  c.eval.max_batches = -1            # -1: the whole validation split

  # Checkpoints, logging.
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 2000
  c.checkpoint.keep = 3              # the last k, and the best by validation error
  c.checkpoint.async_save = True
  c.log_every_steps = 50
  c.progress_bar = True

  # Devices: the paper's two towers on a (data, model) mesh; -1 = all remaining devices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.model = 1
  c.mesh.layout = 'towers'           # or 'one_weird_trick' (Krizhevsky 2014)
  return c
