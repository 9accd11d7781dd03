"""The paper's offline preparation (alexnet_jax.datasets.prepared) on the tiny embedded set."""

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import augment
from alexnet_jax import input_pipeline as ip
from alexnet_jax.datasets import prepared


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  c = ip.default_data_config()
  c.name = 'alexnet_jax_shapes/tiny'
  c.data_dir = str(tmp_path_factory.mktemp('tfds'))
  ip.get_dataset_info(c)
  return c


@pytest.fixture(scope='module')
def copy_dir(source, tmp_path_factory):
  out = tmp_path_factory.mktemp('prepared')
  # The command line, as a user runs it; 64 records per file to exercise several shards.
  prepared.main([f'--config.data.name={source.name}', f'--config.data.data_dir={source.data_dir}',
                 f'--out={out}', '--examples_per_shard=64'])
  return str(out)


def _squares(examples):
  return [augment.decode_and_center_square(data).numpy().astype(np.float32)
          for data, _ in examples.as_numpy_iterator()]


def test_the_copy_holds_every_example_once_with_its_label(source, copy_dir):
  info = prepared.read_info(copy_dir)
  assert info['quality'] == prepared.DEFAULT_QUALITY and info['shape'] == 'square'
  for split, count in (('train', 200), ('validation', 60)):
    assert len(info['splits'][split]['files']) == -(-count // 64)
    originals = list(ip.encoded_examples(source, split).as_numpy_iterator())
    part = prepared.open_split(copy_dir, split)
    assert len(part.labels) == len(originals) == count
    np.testing.assert_array_equal(part.labels, [label for _, label in originals])
    ref = np.stack(_squares(ip.encoded_examples(source, split)))
    difference = np.empty_like(ref)  # one buffer for every image (ref is 60-160 MB)
    for i in range(count):
      image = tf.io.decode_jpeg(part.records[i]).numpy().astype(np.float32)
      assert image.shape == (256, 256, 3)
      np.abs(np.subtract(ref, image, out=difference), out=difference)
      distance = difference.mean(axis=(1, 2, 3))
      # Its own original, up to the re-encoding (a few levels), and far from every other one.
      nearest, second = np.sort(distance)[:2]
      assert np.argmin(distance) == i and nearest < 0.25 * second, (split, i, nearest, second)


def test_training_reads_the_copy_in_the_one_data_order(source, copy_dir):
  config = ip.default_data_config()
  config.prepared_dir = copy_dir
  info = ip.get_dataset_info(config)
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (10, 200, 60)
  kwargs = dict(global_batch_size=32, seed=4, epoch=1, start_step=3)
  single = list(ip.train_batches(config, process_index=0, process_count=1, **kwargs))
  parts = [list(ip.train_batches(config, process_index=p, process_count=2, **kwargs))
           for p in range(2)]
  assert len(single) == 3
  part = prepared.open_split(copy_dir, 'train')
  indices = ip.epoch_indices(200, 32, seed=4, epoch=1)[3 * 32:]
  for k, batch in enumerate(single):
    assert batch['image'].dtype == np.uint8
    for key in batch:
      np.testing.assert_array_equal(
          batch[key], np.concatenate([parts[0][k][key], parts[1][k][key]]))
    np.testing.assert_array_equal(batch['label'], part.labels[indices[32 * k:32 * (k + 1)]])
  evals = list(ip.eval_batches(config, global_batch_size=32, process_index=0, process_count=1))
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in evals])[:60],
                                prepared.open_split(copy_dir, 'validation').labels)
