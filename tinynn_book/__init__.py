"tinynn-book: a small numpy deep-learning framework, derived chapter by chapter in the book's notebooks (nbs/)."
__version__ = "0.1.0"

# The core chapters (0-6), in the book's order: `tinynn_book.layers.Dense` etc. work after `import tinynn_book`. Later
# chapters are imported by name (`from tinynn_book.rnn import LSTM`), so importing an early one never loads a later one.
from . import tensor, layers, losses, conv, optim, model, mnist
