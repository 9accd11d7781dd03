"""A user's own folder of images: one subfolder per class (or train/ and val/ holding those).

    python -m alexnet_jax.main --workdir runs/mine --config alexnet_jax/configs/folder.py \
        --config.data.folder=/path/to/images

The paper's network and optimizer; the class count comes from the folder. Compute the folder's
own mean and PCA statistics first with
``python -m alexnet_jax.data_stats --config alexnet_jax/configs/folder.py
--config.data.folder=/path/to/images --workdir runs/mine`` (it writes data_stats.json) and pass
``--config.data.stats_file=runs/mine/data_stats.json`` (ImageNet's are used otherwise).
"""
from alexnet_jax.configs import imagenet


def get_config():
  c = imagenet.get_config()
  c.data.source = 'folder'
  c.data.name = ''
  c.data.folder = ''                 # required: --config.data.folder=/path/to/images
  c.data.val_fraction = 0.1          # when there is no val/ subfolder
  c.data.shuffle_buffer = 4096
  c.model.init_scheme = 'caffe'
  c.num_epochs = 30
  c.optim.lr_policy = 'plateau'
  c.eval.ten_crop = False
  return c
