"""The rendered book, checked without Quarto: what `nbdev_proc_nbs` hands to Quarto, chapter by chapter.

nbdev 2 renders an `#| export` cell as its signature and docstring only, and an `#| exports` cell with its
source. A chapter's page must show the code the chapter teaches, so every public function and class a chapter
exports must appear as source in the processed notebook, unless it is listed below as plumbing (and then the
chapter's prose names it, so the reader knows it exists and where it lives).
"""
import ast, json, os, re, shutil, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
CHAPTERS = sorted(NBS.glob('[0-9][0-9]_*.ipynb')) + sorted(NBS.glob('cli*.ipynb'))
IDS = [p.stem for p in CHAPTERS]

# Exported names a reader need not read: file formats, downloads, argument parsing, checkpoint file checks.
PLUMBING = {
    '06_mnist': {'gunzip', 'read_bytes', 'cache_dir', 'find_files', 'download_mnist', 'load_folder', 'load_sample'},
    'cli': set(),
    '13_data_parallel': {'import_mpi', 'mpi_world', 'mpiexec_path', 'mpi_run'},
}


def cells(path):
    nb = json.loads(Path(path).read_text(encoding='utf-8'))
    for c in nb['cells']:
        c['source'] = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
    return nb['cells']


def directives(src):
    return {m.group(1) for m in re.finditer(r'^#\|\s*([\w-]+)', src, re.M)}


@pytest.fixture(scope='module')
def proc(tmp_path_factory):
    "Run nbdev_proc_nbs on a copy of the project; returns (the _proc folder, nbdev's stderr)"
    work = tmp_path_factory.mktemp('book') / 'p'
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns('.git', '_proc', '_docs', '*.egg-info', '__pycache__',
                                                              '.ipynb_checkpoints', '.pytest_cache'))
    # Without Quarto on PATH, nbdev "installs" it and then runs `pip install -e` on the copy, which would repoint
    # this environment's editable install at a folder about to be deleted. A stand-in quarto prevents both.
    stub = tmp_path_factory.mktemp('bin')
    (stub / 'quarto').write_text('#!/bin/sh\nexit 0\n'); (stub / 'quarto').chmod(0o755)
    env = dict(os.environ, PATH=f"{stub}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(['nbdev_proc_nbs'], cwd=work, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return work / '_proc', r.stderr


def test_found_the_chapters(): assert len(CHAPTERS) >= 8, CHAPTERS


def test_no_warnings_from_nbdev(proc):
    "nbdev warns about cells that mix imports with other code: the rendered site should build without warnings"
    _, stderr = proc
    warnings = [l for l in stderr.splitlines() if re.search(r'warn', l, re.I)]
    assert not warnings, '\n'.join(warnings[:20])


def test_quarto_math_in_every_format():
    "pandoc's plain commonmark cannot hold TeX math: 77 'Could not convert TeX math' warnings before this setting"
    text = (NBS / '_quarto.yml').read_text()
    assert 'commonmark: default' not in text
    if 'commonmark' in text: assert 'tex_math_dollars' in text


def taught_names(src_cells):
    "Public top-level functions and classes (patched methods included) defined in a chapter's exported cells"
    names = []
    for c in src_cells:
        if c['cell_type'] != 'code' or not directives(c['source']) & {'export', 'exports'}: continue
        for node in ast.parse(c['source']).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith('_'):
                names.append(node.name)
    return names


@pytest.mark.parametrize('nb', CHAPTERS, ids=IDS)
def test_taught_code_is_on_the_page(proc, nb):
    proc_dir, _ = proc
    shown = '\n'.join(c['source'] for c in cells(proc_dir / nb.name) if c['cell_type'] == 'code')
    src = cells(nb)
    plumbing = PLUMBING.get(nb.stem, set())
    prose = '\n'.join(c['source'] for c in src if c['cell_type'] == 'markdown')
    missing = [n for n in taught_names(src) if n not in plumbing
               and not re.search(rf'^\s*(def|class) {re.escape(n)}\b', shown, re.M)]
    assert not missing, f"{nb.name}: exported but not shown on the page (use #| exports): {missing}"
    unexplained = [n for n in plumbing if n in taught_names(src) and f'`{n}`' not in prose and f'`{n}(' not in prose]
    assert not unexplained, f"{nb.name}: hidden plumbing the prose never names: {unexplained}"


def output_text(c):
    parts = []
    for o in c.get('outputs', []):
        for t in (o.get('text', ''), o.get('data', {}).get('text/plain', ''), o.get('evalue', '')):
            parts.append(''.join(t) if isinstance(t, list) else t)
    return ''.join(parts)


CHANGELOG = re.compile(r'\b(was|were) [^.\n]{0,80}\buntil\b|\bTODO\b|\bFIXME\b|\bXXX\b|\bnow fixed\b', re.I)


@pytest.mark.parametrize('nb', CHAPTERS, ids=IDS)
def test_outputs_are_clean(nb):
    "No progress-bar frames, temporary or machine paths, error tracebacks or changelog remarks in what the page shows"
    for i, c in enumerate(cells(nb)):
        if c['cell_type'] != 'code': continue
        text = output_text(c)
        assert '\r' not in text, f"{nb.name} cell {i}: carriage-return progress frames in its output"
        assert not re.search(r'/tmp/|/var/folders/|/work/|/root/|/home/', text), f"{nb.name} cell {i}: a machine path in its output: {text[:300]}"
        assert not any(o.get('output_type') == 'error' for o in c.get('outputs', [])), f"{nb.name} cell {i}: a saved error"
        assert not CHANGELOG.search(text), f"{nb.name} cell {i}: a changelog remark in its output"
    for i, c in enumerate(cells(nb)):
        if c['cell_type'] == 'markdown':
            assert not re.search(r'\bTODO\b|\bFIXME\b', c['source']), f"{nb.name} cell {i}: TODO left in the prose"


def has_figure(c): return any('image/png' in o.get('data', {}) or 'image/svg+xml' in o.get('data', {}) for o in c.get('outputs', []))


@pytest.mark.parametrize('nb', CHAPTERS, ids=IDS)
def test_every_figure_has_a_caption_after_it(proc, nb):
    "The reader is told what to notice: the cell after a figure is prose with at least one sentence"
    proc_dir, _ = proc
    page = [c for c in cells(proc_dir / nb.name) if c['source'].strip() or c.get('outputs')]
    for i, c in enumerate(page):
        if c['cell_type'] != 'code' or not has_figure(c): continue
        nxt = page[i + 1] if i + 1 < len(page) else None
        assert nxt is not None and nxt['cell_type'] == 'markdown', f"{nb.name}: figure in cell {i} is followed by code, not prose:\n{c['source'][:200]}"
        words = re.sub(r'[#>*_`$]', ' ', nxt['source']).split()
        assert len(words) >= 6, f"{nb.name}: the prose after the figure in cell {i} is not a sentence: {nxt['source'][:100]!r}"


@pytest.mark.parametrize('nb', CHAPTERS, ids=IDS)
def test_cross_references(nb):
    "One style, 'chapter 3', and links that point at notebooks that exist"
    prose = '\n'.join(c['source'] for c in cells(nb) if c['cell_type'] == 'markdown')
    zero_padded = re.findall(r'.{0,30}[Cc]hapters? 0\d.{0,10}', prose)
    assert not zero_padded, f"{nb.name}: write 'chapter 7', not 'chapter 07': {zero_padded}"
    for target in re.findall(r'\]\(([\w.-]+\.ipynb)(?:#[\w-]*)?\)', prose):
        assert (NBS / target).exists(), f"{nb.name}: link to {target}, which does not exist"


@pytest.mark.parametrize('nb', CHAPTERS, ids=IDS)
def test_chapter_anatomy(nb):
    "A title with a one-line summary, a Summary and Exercises section, and code cells of one idea each"
    src = cells(nb)
    first = src[0]['source']
    assert first.startswith('# ') and '\n> ' in first, f"{nb.name}: the first cell should be '# Title' and a '> summary' line"
    headings = [l.strip() for c in src if c['cell_type'] == 'markdown' for l in c['source'].splitlines() if l.startswith('## ')]
    assert '## Summary' in headings and '## Exercises' in headings, f"{nb.name}: headings {headings}"
    long = [(i, len(c['source'].splitlines())) for i, c in enumerate(src)
            if c['cell_type'] == 'code' and len(c['source'].splitlines()) > 40]
    assert not long, f"{nb.name}: code cells over 40 lines (cell, lines): {long}"


class _StrictLoader(__import__('yaml').SafeLoader):
    "YAML as Quarto's js-yaml reads it: a mapping key given twice is an error, not a silent overwrite"
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise __import__('yaml').constructor.ConstructorError(
                    None, None, f'duplicated mapping key {key!r}', key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def cell_options(src):
    "The `#|` lines at the top of a code cell, as the YAML document Quarto parses (its 'cell options')"
    lines = []
    for line in src.splitlines():
        if not line.startswith('#|'): break
        lines.append(line[2:].removeprefix(' '))
    return '\n'.join(lines)


def test_strict_yaml_refuses_a_key_given_twice():
    "The check below must be able to fail: the very cell that once stopped the whole site from building"
    import yaml
    # exactly what nbdev_proc_nbs made of chapter 7's `#| exports` + `#| code-fold: true` cell
    opts = cell_options('#| code-fold: show\n#| code-summary: "Exported source"\n#| code-fold: true\ndef f(): pass')
    with pytest.raises(yaml.YAMLError, match='duplicated mapping key'): yaml.load(opts, Loader=_StrictLoader)
    assert yaml.load(cell_options('#| code-fold: show\n#| echo: false\nx = 1'), Loader=_StrictLoader) == {'code-fold': 'show', 'echo': False}


@pytest.mark.parametrize('nb', CHAPTERS + [NBS / 'index.ipynb'], ids=IDS + ['index'])
def test_cell_options_parse_as_quarto_parses_them(proc, nb):
    "Every code cell's options, as Quarto receives them, are valid YAML with no key twice (else no site is built)"
    import yaml
    proc_dir, _ = proc
    bad = []
    for i, c in enumerate(cells(proc_dir / nb.name)):
        if c['cell_type'] != 'code': continue
        opts = cell_options(c['source'])
        if not opts: continue
        try: parsed = yaml.load(opts, Loader=_StrictLoader)
        except yaml.YAMLError as e: bad.append(f'cell {i}: {e}\n{opts}'); continue
        if parsed is not None and not isinstance(parsed, dict): bad.append(f'cell {i}: options are not a mapping:\n{opts}')
    assert not bad, f"{nb.name}: Quarto would refuse these cell options:\n" + '\n'.join(bad)
