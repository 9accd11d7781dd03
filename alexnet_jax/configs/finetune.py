"""Fine-tune imported ImageNet weights on your own folder of images (one subfolder per class).

    python -m alexnet_jax.main --workdir runs/mine --config alexnet_jax/configs/finetune.py \
        --config.init_from=bvlc_alexnet.caffemodel --config.data.folder=/path/to/images

``init_from`` takes any file ``alexnet_jax.weights.load`` reads (.caffemodel, .onnx, .pth,
.safetensors, this project's own). The network is the file's preset and every layer starts from
the file's weights, except fc8 when the folder's class count differs from the file's (then fc8
starts afresh, and the log says so). The images are prepared as the preset's weights were
trained (Caffe: warped to 256x256 and 0..255 minus the mean pixel; torchvision: the shorter
side to 256, mean and std), so the imported features see what they were made for.

Differences from training from scratch (``folder.py``), and why:
- learning rate 0.001, a tenth of the paper's: the imported layers are already good, a large
  step would undo them (the usual fine-tuning choice, e.g. Caffe's flickr_style example);
- 10 epochs with the rate divided by 10 after the 7th: a small folder is learned in a few
  passes; more only overfits;
- batch 32: a laptop CPU's size; every layer still trains (no layer is frozen).
"""
from alexnet_jax.configs import folder


def get_config():
  c = folder.get_config()
  c.init_from = ''                   # required: --config.init_from=FILE
  c.model.preset = ''                # '': the weights file's preset
  c.data.preprocess = ''             # '': the preset's (model.preprocess)
  c.batch_size = 32
  c.num_epochs = 10
  c.optim.learning_rate = 0.001
  c.optim.lr_policy = 'steps'
  c.optim.step_epochs = (7,)
  c.eval.batch_size = 32
  return c
