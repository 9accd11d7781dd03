"""Every number of every shipped config at 0, -1 and a huge value: refused with one sentence
naming the field, or one of the values stated here to run sensibly (issue 17, defect 4)."""
import pytest

from alexnet_jax import config_checks
from alexnet_jax.configs import default, folder, imagenet

CONFIGS = {'default': default, 'folder': folder, 'imagenet': imagenet}
HUGE_INT, HUGE_FLOAT = 10**12, 1e30

# (field, value) pairs that are valid, and why they run sensibly.
SENSIBLE = {
    ('seed', 0),
    ('max_steps', -1),                      # no cap: num_epochs decides
    ('max_steps', HUGE_INT),                # a cap past the last epoch: num_epochs decides
    ('num_epochs', HUGE_INT),               # a long run, checkpointed as any other
    ('checkpoint.every_steps', HUGE_INT),   # saves only at the ends of epochs
    ('checkpoint.keep', HUGE_INT),          # keeps every checkpoint
    ('log_every_steps', HUGE_INT),          # no train records, evals still written
    ('eval.every_epochs', HUGE_INT),        # evaluates at the end of the run only
    ('eval.max_batches', -1),               # the whole split
    ('eval.max_batches', HUGE_INT),         # the whole split
    ('mesh.data', -1),                      # all devices
    ('mesh.data', HUGE_INT),                # refused by the mesh check: too few devices
    ('mesh.model', HUGE_INT),               # refused by the mesh check
    ('model.num_classes', 0),               # from the dataset
    ('model.num_classes', HUGE_INT),        # refused: the dataset has other classes
    ('model.dropout_rate', 0),              # no dropout
    ('model.lrn_alpha', 0), ('model.lrn_alpha', HUGE_FLOAT),  # LRN a constant scale / ~0
    ('model.lrn_beta', 0), ('model.lrn_beta', HUGE_FLOAT),
    ('model.lrn_k', HUGE_FLOAT),
    ('data.input_scale', HUGE_FLOAT),       # diverges: a clear TrainingError
    ('data.pca_alpha_std', 0),              # no colour noise
    ('data.pca_alpha_std', HUGE_FLOAT),
    ('data.shuffle_buffer', HUGE_INT),      # tf.data holds at most the split
    ('data.num_parallel_calls', -1),        # AUTOTUNE
    ('data.prefetch', 0), ('data.prefetch', -1),
    ('data.threadpool_size', 0),
    ('data.device_prefetch', 0),            # each batch placed just before its step
    ('optim.learning_rate', HUGE_FLOAT),    # diverges: a clear TrainingError
    ('optim.momentum', 0),
    ('optim.weight_decay', 0), ('optim.weight_decay', HUGE_FLOAT),  # diverges: TrainingError
    ('optim.plateau_patience', HUGE_INT),
    ('optim.plateau_max_decays', 0), ('optim.plateau_max_decays', HUGE_INT),
    ('optim.plateau_min_delta', 0), ('optim.plateau_min_delta', HUGE_FLOAT),
    ('optim.step_factor', HUGE_FLOAT),      # diverges: TrainingError
}
# Sequences: every element set to the value.
SEQUENCE_FIELDS_SENSIBLE = {
    ('data.mean_rgb', 0), ('data.mean_rgb', -1), ('data.mean_rgb', HUGE_FLOAT),
    ('data.pca_eigval', 0), ('data.pca_eigval', HUGE_FLOAT),
    ('data.pca_eigvec', 0), ('data.pca_eigvec', -1), ('data.pca_eigvec', HUGE_FLOAT),
    ('optim.step_epochs', 0), ('optim.step_epochs', HUGE_INT),
}


def _numeric_fields(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _numeric_fields(value, prefix + key + '.')
    elif isinstance(value, (int, float, tuple)) and not isinstance(value, bool):
      yield prefix + key, value


def _set(config, dotted, value):
  *parents, last = dotted.split('.')
  target = config
  for key in parents:
    target = target[key]
  target[last] = value


def _with_value(old, value):
  if isinstance(old, tuple):
    return tuple(_with_value(x, value) for x in old)
  if isinstance(old, float) and value == HUGE_INT:
    return HUGE_FLOAT
  return float(value) if isinstance(old, float) else value


def _cases():
  for name, module in CONFIGS.items():
    for field, _ in _numeric_fields(module.get_config()):
      for value in (0, -1, HUGE_INT):
        yield pytest.param(name, field, value, id=f'{name}-{field}={value}')


def test_every_numeric_field_of_every_shipped_config_has_a_rule():
  for module in CONFIGS.values():
    fields = {field for field, _ in _numeric_fields(module.get_config())}
    assert fields <= set(config_checks.RULES), fields - set(config_checks.RULES)
    config_checks.check_config(module.get_config())  # the shipped values pass


@pytest.mark.parametrize('name, field, value', list(_cases()))
def test_zero_minus_one_and_huge_are_refused_naming_the_field_or_run_sensibly(
    name, field, value):
  config = CONFIGS[name].get_config()
  old = config_checks.get_field(config, field)
  new = _with_value(old, value)
  with config.unlocked():
    _set(config, field, new)
  stated = SENSIBLE | (SEQUENCE_FIELDS_SENSIBLE if isinstance(old, tuple) else set())
  sensible = (field, value) in stated or (value == HUGE_INT and (field, HUGE_FLOAT) in stated)
  if sensible:
    config_checks.check_config(config)
    return
  with pytest.raises(config_checks.ConfigValueError) as raised:
    config_checks.check_config(config)
  message = str(raised.value)
  assert f'--config.{field}' in message or f'config.{field}' in message, message
  assert '\n' not in message


def test_a_crop_too_small_for_the_network_or_larger_than_the_resize_is_refused():
  config = default.get_config()
  assert config_checks.smallest_crop() == 67  # 67 -> conv1 15 -> pool 7 -> pool 3 -> pool 1
  config.data.crop_size = 66
  with pytest.raises(config_checks.ConfigValueError, match='at least 67 pixels'):
    config_checks.check_config(config)
  config.data.crop_size = 300
  with pytest.raises(config_checks.ConfigValueError, match='larger than config.data.resize_size'):
    config_checks.check_config(config)


def test_a_data_folder_that_is_a_file_is_named_as_a_file(tmp_path):
  path = tmp_path / 'images.zip'
  path.write_bytes(b'PK')
  config = folder.get_config()
  config.data.folder = str(path)
  with pytest.raises(config_checks.ConfigValueError, match='is a file, not a directory'):
    config_checks.check_config(config)
