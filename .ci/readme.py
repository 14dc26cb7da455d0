"""Write README.md from nbs/index.ipynb, the way `nbdev_readme` would if Quarto were installed.

`python .ci/readme.py` rewrites README.md; `python .ci/readme.py --check` exits 1 if it is stale.
Markdown cells are copied, code cells become ```python blocks, and text outputs follow them;
cells marked `#| hide` are left out, as the rendered book leaves them out.
"""
import sys
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parent.parent

def cell_markdown(cell):
    src = cell.source.strip()
    # Quarto's executable-looking ```{mermaid} is GitHub's ```mermaid: the README shows the same diagram
    if cell.cell_type == 'markdown': return src.replace('```{mermaid}', '```mermaid')
    lines = src.splitlines()
    directives = [l for l in lines if l.startswith('#|')]
    if any(d.split()[1:2] in (['hide'], ['export'], ['exporti']) for d in directives): return ''
    parts = []
    code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
    if code and not any(d.split()[1:2] == ['echo:'] and d.split()[2:3] == ['false'] for d in directives):
        parts.append(f'```python\n{code}\n```')
    for out in cell.get('outputs', []):
        if out.output_type == 'stream': text = out.text
        elif 'text/markdown' in out.get('data', {}): parts.append(out.data['text/markdown'].strip()); continue
        elif 'text/plain' in out.get('data', {}): text = out.data['text/plain']
        else: continue
        parts.append('```\n' + text.rstrip('\n') + '\n```')
    return '\n\n'.join(parts)

def render(nb_path=ROOT/'nbs'/'index.ipynb'):
    nb = nbformat.read(nb_path, as_version=4)
    blocks = [cell_markdown(c) for c in nb.cells]
    return '\n\n'.join(b for b in blocks if b) + '\n'

if __name__ == '__main__':
    readme = ROOT/'README.md'
    text = render()
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text(encoding='utf-8') != text:
            sys.exit('README.md is not in step with nbs/index.ipynb: run `python .ci/readme.py` and commit.')
    else:
        readme.write_text(text, encoding='utf-8')
