"Run every chapter notebook through nbdev's test runner (slow cells skipped), one pytest result per chapter."
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook  # renamed so pytest does not collect it

NBS = Path(__file__).resolve().parent.parent/'nbs'
# the chapters, the appendix (the command) and the front page, whose quick start runs too
NOTEBOOKS = sorted(NBS.glob('[0-9][0-9]_*.ipynb')) + sorted(NBS.glob('cli*.ipynb')) + [NBS/'index.ipynb']

def test_found_the_chapters(): assert len(NOTEBOOKS) >= 8, NOTEBOOKS

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter(nb):
    ok, seconds = run_notebook(nb, skip_flags=get_config(path=NBS).tst_flags.split(), showerr=True)
    assert ok, f"{nb.name} failed (traceback above)"
