"""Execute a chapter notebook top to bottom in place, like `jupyter nbconvert --execute --inplace`, optionally
keeping the recorded outputs of `#| slow` cells instead of re-running them (--keep-slow): use that only when the
change cannot affect what the slow cells computed (their code and everything they depend on are unchanged).
Cells marked `#| eval: false` are never run (nbdev's test runner skips them too) and keep what they hold.
Run from the project root: python .ci/exec_nb.py nbs/06_mnist.ipynb [--keep-slow]"""
import copy, re, sys, os
from pathlib import Path
import nbformat
from nbclient import NotebookClient

path = Path(sys.argv[1]).resolve(); keep_slow = '--keep-slow' in sys.argv
nb = nbformat.read(path, as_version=4)
slow = lambda c: c.cell_type == 'code' and re.search(r'^#\|\s*slow\b', c.source, re.M)
saved = {}
no_eval = lambda c: c.cell_type == 'code' and re.search(r'^#\|\s*eval:\s*false\b', c.source, re.M)
for i, c in enumerate(nb.cells):
    if no_eval(c): saved[i] = (c.source, copy.deepcopy(c.outputs), c.get('execution_count')); c.source = '# (eval: false)'
if keep_slow:
    for i, c in enumerate(nb.cells):
        if slow(c): saved[i] = (c.source, copy.deepcopy(c.outputs), c.get('execution_count')); c.source = '# (slow cell kept as recorded)'
# The inline backend always: an exported MPLBACKEND=Agg (as for pytest) would drop every figure from the page
os.environ['MPLBACKEND'] = 'module://matplotlib_inline.backend_inline'
NotebookClient(nb, timeout=3600, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}}).execute()
for i, (src, outs, n) in saved.items():
    nb.cells[i].source, nb.cells[i].outputs = src, outs
nbformat.write(nb, path)
print(f'executed {path.name}' + (f' ({len(saved)} slow or eval: false cells kept as recorded)' if saved else ''))
