"""Writes ``alexnet_jax/data/imagenet2012_classes.tsv``: ImageNet's 1000 synsets and their names.

    python experiments/make_imagenet_classes.py --torchvision-wheel torchvision-0.29.1-...whl \
        [--wordnet /usr/share/wordnet/data.noun]

Where each column comes from:
- the synset ids, in order: TFDS's ``imagenet2012`` label list (``datasets/imagenet2012/
  labels.txt`` inside tensorflow_datasets), which is the sorted list of the 1000 synsets, the
  order of Caffe's and torchvision's 1000 outputs too;
- the names: torchvision's short English class names (``_IMAGENET_CATEGORIES`` in
  ``torchvision/models/_meta.py``, BSD-3-Clause), read from an installed torchvision or from a
  torchvision wheel without installing it.

With ``--wordnet`` (WordNet 3.0's ``data.noun``, e.g. Debian's ``wordnet-base``; an ImageNet
synset id is ``n`` + the WordNet noun offset) every name is checked to be (part of) one of its
synset's WordNet lemmas, so the two lists cannot be shifted against each other. The shipped
file passed that check for all 1000 classes.
"""

from __future__ import annotations

import argparse
import ast
import os
import zipfile

import tensorflow_datasets as tfds

_META = 'torchvision/models/_meta.py'
OUT = os.path.join(os.path.dirname(__file__), '..', 'alexnet_jax', 'data',
                   'imagenet2012_classes.tsv')


def torchvision_names(wheel: str | None) -> list[str]:
  """torchvision's ``_IMAGENET_CATEGORIES`` from a wheel, or from the installed package."""
  if wheel:
    with zipfile.ZipFile(wheel) as z:
      source = z.read(_META).decode('utf-8')
  else:
    import importlib.util  # pylint: disable=g-import-not-at-top
    spec = importlib.util.find_spec('torchvision')
    if spec is None:
      raise SystemExit('error: torchvision is not installed; pass --torchvision-wheel.')
    with open(os.path.join(os.path.dirname(spec.origin), 'models', '_meta.py'),
              encoding='utf-8') as f:
      source = f.read()
  for node in ast.parse(source).body:
    if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == '_IMAGENET_CATEGORIES':
      return list(ast.literal_eval(node.value))
  raise SystemExit(f'error: no _IMAGENET_CATEGORIES in {_META}.')


def tfds_synsets() -> list[str]:
  path = tfds.core.tfds_path('datasets/imagenet2012/labels.txt')
  return path.read_text().split()


def wordnet_lemmas(data_noun: str) -> dict[str, list[str]]:
  """``{'n01440764': ['tench', 'tinca tinca'], ...}`` from WordNet 3.0's data.noun."""
  lemmas = {}
  with open(data_noun, encoding='latin-1') as f:
    for line in f:
      if line.startswith('  '):  # the licence header
        continue
      fields = line.split()
      count = int(fields[3], 16)
      lemmas['n' + fields[0]] = [fields[4 + 2 * i].replace('_', ' ').lower()
                                 for i in range(count)]
  return lemmas


def check_against_wordnet(synsets, names, lemmas) -> None:
  for index, (synset, name) in enumerate(zip(synsets, names)):
    words = lemmas.get(synset, [])
    if not any(name.lower() in w or w in name.lower() for w in words):
      raise SystemExit(f'error: class {index} {synset} {name!r} is none of its WordNet lemmas '
                       f'{words}.')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--torchvision-wheel', default=None)
  parser.add_argument('--wordnet', default=None, help="WordNet 3.0's data.noun")
  parser.add_argument('--out', default=OUT)
  args = parser.parse_args()
  synsets, names = tfds_synsets(), torchvision_names(args.torchvision_wheel)
  if len(synsets) != 1000 or len(names) != 1000:
    raise SystemExit(f'error: {len(synsets)} synsets and {len(names)} names, not 1000 each.')
  if args.wordnet:
    check_against_wordnet(synsets, names, wordnet_lemmas(args.wordnet))
  with open(args.out, 'w', encoding='utf-8') as f:
    f.write('# ImageNet (ILSVRC-2012) classes in output order: synset id, then a short name.\n'
            '# Synsets: tensorflow_datasets imagenet2012 labels.txt (sorted). Names: torchvision '
            '_IMAGENET_CATEGORIES (BSD-3-Clause).\n'
            '# Written by experiments/make_imagenet_classes.py; checked against WordNet 3.0.\n')
    for synset, name in zip(synsets, names):
      f.write(f'{synset}\t{name}\n')
  print(f'Wrote {len(synsets)} classes to {os.path.normpath(args.out)}.')


if __name__ == '__main__':
  main()
