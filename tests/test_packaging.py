"""Packaging: the model imports without TensorFlow, pyproject declares the dependencies, and
CI runs exactly README.md's test command."""

import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The lower bounds the project documents (the versions it is developed and tested with).
LOWER_BOUNDS = {
    'jax': '0.10.2', 'jaxlib': '0.10.2', 'flax': '0.12.8', 'optax': '0.2.8', 'chex': '0.1.92',
    'orbax-checkpoint': '0.12.8', 'tensorflow-datasets': '4.9.10', 'tensorflow-cpu': '2.21.0',
    'tensorflow': '2.21.0', 'tensorboard': '2.21.0',
}
ALSO_REQUIRED = {'ml-collections', 'absl-py', 'numpy', 'pillow', 'matplotlib', 'tqdm', 'psutil'}


def _normalise(name):
  return re.sub(r'[-_.]+', '-', name).lower()


@pytest.fixture(scope='module')
def pyproject():
  with open(ROOT / 'pyproject.toml', 'rb') as f:
    return tomllib.load(f)


def test_model_import_pulls_no_tensorflow_or_training_code():
  code = ('import sys, alexnet_jax.model; '
          'bad = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow" '
          'or m in ("alexnet_jax.steps", "alexnet_jax.input_pipeline", "tensorflow_datasets")); '
          'assert not bad, bad')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=120)


def test_dependencies_and_lower_bounds(pyproject):
  requirements = [Requirement(r) for r in pyproject['project']['dependencies']]
  by_name = {}
  for req in requirements:
    by_name.setdefault(_normalise(req.name), []).append(req)
  for name, bound in LOWER_BOUNDS.items():
    assert name in by_name, f'{name} missing from dependencies'
    for req in by_name[name]:
      assert {(s.operator, s.version) for s in req.specifier} == {('>=', bound)}, str(req)
  assert ALSO_REQUIRED <= set(by_name), ALSO_REQUIRED - set(by_name)
  # tensorflow-cpu where its wheels exist (linux x86-64), tensorflow elsewhere: never both.
  assert str(by_name['tensorflow-cpu'][0].marker) != str(by_name['tensorflow'][0].marker)
  # Every requirement that applies here is met by the environment the tests run in.
  for req in requirements:
    if req.marker is None or req.marker.evaluate():
      installed = importlib.metadata.version(req.name)
      assert req.specifier.contains(installed, prereleases=True), (str(req), installed)


def test_compare_extra_pins_cpu_torch(pyproject):
  extras = pyproject['project']['optional-dependencies']
  torch_pins = [r for r in extras['compare'] if _normalise(Requirement(r).name) == 'torch']
  assert torch_pins == ['torch==2.13.0']
  # The weight parity tests run ONNX graphs in ONNX Runtime; export needs only onnx.
  assert {_normalise(Requirement(r).name) for r in extras['compare']} == {
      'torch', 'onnx', 'onnxruntime'}
  assert [_normalise(Requirement(r).name) for r in extras['onnx']] == ['onnx']
  assert any(_normalise(Requirement(r).name) == 'pytest' for r in extras['test'])


def _readme_test_command():
  """The first non-fence line after the test-command marker, as a reader of README sees it."""
  lines = (ROOT / 'README.md').read_text(encoding='utf-8').splitlines()
  start = lines.index('<!-- test-command -->')
  return next(line for line in lines[start + 1:] if not line.startswith('```'))


def test_ci_runs_exactly_the_readme_test_command():
  awk = shutil.which('awk')
  if awk is None:
    pytest.skip('awk is not installed')
  script = (ROOT / '.ci' / 'run').read_text(encoding='utf-8')
  match = re.search(r"test_cmd=\$\(awk '([^']*)' README\.md\)", script)
  assert match, ".ci/run no longer extracts the command with awk from README.md"
  printed = subprocess.run([awk, match.group(1), 'README.md'], cwd=ROOT, check=True,
                           capture_output=True, text=True, timeout=30).stdout
  command = _readme_test_command()
  assert printed == command + '\n'
  assert 'pytest' in command and "pip install -e '.[test]'" in command
  # CI runs the variable it extracted, not a copy of the command.
  assert 'bash -c "$test_cmd"' in script


def test_the_readme_test_command_s_workers_come_from_the_test_extra(pyproject):
  # `pytest -n 2` needs pytest-xdist: a fresh venv with only the `test` extra must have it.
  command = _readme_test_command()
  assert re.search(r'pytest -n \d', command), command
  extras = pyproject['project']['optional-dependencies']
  assert any(_normalise(Requirement(r).name) == 'pytest-xdist' for r in extras['test'])
  # Whole files per worker, so a module's fixtures are built once.
  assert '--dist loadfile' in pyproject['tool']['pytest']['ini_options']['addopts']
