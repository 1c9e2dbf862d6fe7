"""The package tree shows the architecture: each layer imports only the layers below it."""

import ast
import pathlib

SKINJAX = pathlib.Path(__file__).resolve().parents[1] / 'skinjax'
# Top to bottom; a package may import those after it, never those before it.
LAYERS = ('main', 'training', 'export', 'evaluation', 'runtime', ('data', 'models', 'weights'),
          'kernels')


def _layer(module: str) -> int:
  top = module.split('.')[1] if module.startswith('skinjax.') else None
  for i, layer in enumerate(LAYERS):
    if top == layer or (isinstance(layer, tuple) and top in layer):
      return i
  raise AssertionError(f'{module} is in no layer; add its package to LAYERS')


def _imports(path: pathlib.Path):
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('skinjax'):
      names = [node.module] if node.module != 'skinjax' else [f'skinjax.{a.name}' for a in node.names]
      yield from names
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith('skinjax.'))


def test_imports_only_point_down():
  upward = []
  for path in sorted(SKINJAX.rglob('*.py')):
    if path.parent == SKINJAX and path.name == '__init__.py':
      continue
    module = 'skinjax.' + '.'.join(path.relative_to(SKINJAX).with_suffix('').parts)
    for imported in _imports(path):
      if _layer(imported) < _layer(module):
        upward.append(f'{module} imports {imported}')
  assert not upward, upward


def test_no_module_is_left_at_the_top_but_the_entry_point():
  assert sorted(p.name for p in SKINJAX.glob('*.py')) == ['__init__.py', 'main.py']
