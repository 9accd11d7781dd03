"""The training-step benchmark's tables, README sections and output files."""

from __future__ import annotations

import json
import os

from experiments.bench.workers import REPO

DEFAULT_JSON = os.path.join(REPO, 'experiments', 'results', 'benchmark.json')
README_START = '<!-- benchmark:start -->'
README_END = '<!-- benchmark:end -->'


def fmt(value, spec: str, empty: str = '-') -> str:
  if value is None or (isinstance(value, float) and value != value):
    return empty
  return format(value, spec)


def machine_line(meta: dict) -> str:
  load = meta.get('loadavg_start'), meta.get('loadavg_end')
  load_text = ''
  if all(load):
    load_text = (f'; load average (1 min) {load[0][0]:.1f} at start, {load[1][0]:.1f} at end '
                 f'on {meta.get("cpu_count")} cores')
  versions = ', '.join(f'{m} {meta[f"{m}_version"]}'
                       for m in ('jax', 'torch', 'onnxruntime') if f'{m}_version' in meta)
  return (f'{meta.get("cpu") or meta.get("processor")}, {meta.get("cpu_count")} cores, '
          f'{meta.get("memory_gib", "?")} GiB; {versions}{load_text}')


def _header(data: dict) -> list[str]:
  s = data['settings']
  # .get: results written before --image-size are all at the paper's 227.
  size = s.get('image_size', 227)
  images = '' if size == 227 else f' of {size}x{size} images (not the paper\'s 227)'
  return [
      f'Training step (forward, softmax cross-entropy, backward, SGD with momentum and weight '
      f'decay), {s["dtype"]}, device-resident synthetic batch{images}; median of '
      f'{s["timed_steps"]} timed steps after {s["warmup_steps"]} warm-up steps (and a first, '
      f'compiling step), configurations alternated step by step in one run.',
      '',
      f'Command: `{data["command"]}` ({data["date"]})',
      '',
      f'Machine: {machine_line(data["machine"])}.',
      '']


def rate_table(rows: list[dict], batches, value='images_per_s', title='images/s') -> list[str]:
  """One line per label, one column per batch size."""
  labels = list(dict.fromkeys(r['label'] for r in rows))
  by = {(r['label'], r['batch']): r for r in rows}
  lines = [f'| {title} | ' + ' | '.join(f'batch {b}' for b in batches) + ' |',
           '|---|' + '---|' * len(batches)]
  for label in labels:
    cells = [fmt(by[(label, b)][value], '.1f') if (label, b) in by else '-' for b in batches]
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return lines


def _flops_lines(data: dict, results: list[dict]) -> list[str]:
  flops = data['flops'][str(data['settings']['batch_sizes'][0])]
  xla = (f'; XLA\'s cost analysis of the XLA-differentiated step: '
         f'{flops["xla_step_per_image"] / 1e9:.3f} G' if 'xla_step_per_image' in flops else '')
  lines = [f'FLOPs per image (analytic: forward {flops["forward_per_image"] / 1e9:.3f} G, '
           f'step {flops["step_per_image"] / 1e9:.3f} G{xla}). GFLOP/s below count the '
           f'analytic step FLOPs; "XLA GFLOP/image" is the cost analysis of each compiled '
           f'step as configured (a lax.scan body counted once).']
  ceilings = [r for r in results if r['kind'].startswith('matmul')]
  if ceilings:
    lines.append('Matmul ceiling, fp32 ' + ', '.join(
        f'{r["label"].split(",")[1].split("(")[0].strip()} n={r["n"]} batch-{r["batch"]} '
        f'round: {r["gflops"]:.0f} GFLOP/s' for r in ceilings) + '.')
  return lines


def _detail_table(rows: list[dict]) -> list[str]:
  lines = ['| configuration | batch | images/s | ms/step median (min-max) | GFLOP/s | '
           '% of ceiling | CPU s/step | XLA GFLOP/image | compile s | first step s | '
           'peak RSS MiB: process / timed steps / after import |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f'| {r["label"]} | {r["batch"]} | {r["images_per_s"]:.1f} | '
        f'{r["median_s"] * 1e3:.0f} ({r["min_s"] * 1e3:.0f}-{r["max_s"] * 1e3:.0f}) | '
        f'{r["gflops"]:.1f} | {fmt(100 * r.get("fraction_of_ceiling", float("nan")), ".1f")} | '
        f'{r["median_cpu_s"]:.2f} | '
        f'{fmt(r.get("xla_flops_per_image", float("nan")) / 1e9, ".3f")} | '
        f'{fmt(r.get("compile_s"), ".1f")} | {r["first_step_s"]:.1f} | '
        f'{r["peak_rss_mib"]:.0f} / {fmt(r.get("step_peak_rss_mib"), ".0f")} / '
        f'{r["rss_start_mib"]:.0f} |')
  return lines


RSS_NOTE = ('Peak RSS: the process\'s high-water mark (ru_maxrss: imports, setup, compilation '
            'and steps; torch.compile compiles in helper processes, not counted), the highest '
            'RSS sampled every 5 ms during the timed steps, and the RSS right after importing '
            'the framework. CPU s/step: CPU time of the worker over a step, all threads (less '
            'sensitive to other load than wall time; includes spin-waiting).')


def markdown_report(data: dict) -> str:
  """The tables: images/s per configuration and batch, then every measured number."""
  results = data['results']
  rows = [r for r in results if not r['kind'].startswith('matmul')]
  lines = _header(data) + rate_table(rows, data['settings']['batch_sizes'])
  lines += [''] + _flops_lines(data, results) + [''] + _detail_table(rows)
  lines += ['', RSS_NOTE]
  for note in data.get('notes', []):
    lines += ['', f'Note: {note}']
  return '\n'.join(lines) + '\n'


def check_readme(path: str | None, start: str = README_START, end: str = README_END) -> None:
  """Before a run: a user error if ``--readme`` names a file without the section's markers."""
  if path is None:
    return
  from experiments.bench.configs import user_error  # pylint: disable=g-import-not-at-top
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except OSError as e:
    user_error(f'cannot read --readme {path}: {e.strerror}.')
  if start not in text or end not in text:
    user_error(f'{path} has no {start} ... {end} section for the table: add the two markers.')


def update_readme(path: str, table: str, start: str = README_START,
                  end: str = README_END) -> None:
  """Replaces the text between the ``start`` and ``end`` markers of ``path`` with ``table``."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  if start not in text or end not in text:
    raise SystemExit(f'{path} has no {start} ... {end} section to update.')
  head, rest = text.split(start, 1)
  _, tail = rest.split(end, 1)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(head + start + '\n' + table + end + tail)


def write_outputs(data: dict, table: str, json_path: str | None, md_path: str | None) -> None:
  if json_path:
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, 'w', encoding='utf-8') as f:
      json.dump(data, f, indent=1)
  if md_path:
    os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
    with open(md_path, 'w', encoding='utf-8') as f:
      f.write(table)
