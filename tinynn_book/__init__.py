"tinynn-book: a small numpy deep-learning framework, derived chapter by chapter in the book's notebooks (nbs/)."
__version__ = "0.1.0"

# One module per chapter, in the book's order; `tinynn_book.layers.Dense` etc. work after `import tinynn_book`.
from . import tensor, layers, losses, conv, optim, model, mnist, rnn, transformer, parallel
