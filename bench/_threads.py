"""Imported first by the benchmarks that time one thread count per child process (`--child-threads N`).

OpenBLAS fixes its thread count when numpy loads, so the child's count must be in the environment before that
import; `import _threads` (bench/ is on sys.path when a script there runs) sets it from the command line.
"""
import os, sys

def threads_from_argv(default='2'):
    "The --child-threads value of this process's command line, or `default`"
    for i, a in enumerate(sys.argv):
        if a == '--child-threads': return sys.argv[i + 1]
    return default

for _var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ[_var] = threads_from_argv()
