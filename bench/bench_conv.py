"""Forward + backward time of tinynn_book's Conv2D and MaxPool2D against PyTorch's CPU conv2d and max_pool2d at LeNet and ResNet shapes.

Run: python bench/bench_conv.py [--shapes lenet,resnet] [--repeats 15] [--threads 2] [--batch 128] [--settle 0.15]
--shapes lenet: LeNet-5's two convolutions and two poolings; resnet: 3x3 convolutions with padding 1 at the shapes
of chapter 9's ResNet stages, and 32->64 and 64->64 channels at 14x14 and 7x7.
float32 throughout; both libraries get the same number of threads; the two are interleaved (alternating which
goes first, with a short pause before each round so one library's spinning worker threads do not slow the
other's) and the table shows medians. PyTorch is optional: without it only our numbers are printed.
This is a benchmark, not a test: nothing here asserts a time.
"""
import argparse, os, sys, time

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--repeats', type=int, default=15, help='timed rounds per case (median reported)')
    p.add_argument('--inner', type=int, default=3, help='calls per timed round')
    p.add_argument('--threads', type=int, default=2, help='threads for OpenBLAS (numpy) and for torch')
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--shapes', default='lenet', help="comma-separated: lenet, resnet")
    p.add_argument('--settle', type=float, default=0.15,
                   help="seconds to pause before each timed round, so the other library's idle threads (OpenBLAS and "
                        "OpenMP both spin for a while after a parallel call) stop competing for the cores")
    return p.parse_args()

args = parse_args()
# numpy's BLAS reads its thread count when it loads, so set it before the import
for var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ[var] = str(args.threads)

import numpy as np
from tinynn_book.conv import Conv2D, MaxPool2D

try:
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
except ImportError:
    torch = None

CONVS = {'lenet': [('Conv2D 1->6 5x5 pad 2, 28x28', 1, 28, 6, 5, 1, 2, False),
                   ('Conv2D 6->16 5x5, 14x14', 6, 14, 16, 5, 1, 0, True)],
         'resnet': [('Conv2D 24->24 3x3 pad 1, 14x14', 24, 14, 24, 3, 1, 1, True),       # chapter 9's ResNet, stage 1
                    ('Conv2D 24->48 3x3 s2 pad 1, 14x14', 24, 14, 48, 3, 2, 1, True),    # stage 2's first convolution
                    ('Conv2D 48->48 3x3 pad 1, 7x7', 48, 7, 48, 3, 1, 1, True),          # stage 2's second
                    ('Conv2D 32->64 3x3 pad 1, 14x14', 32, 14, 64, 3, 1, 1, True),       # the shapes issue 10 names
                    ('Conv2D 64->64 3x3 pad 1, 7x7', 64, 7, 64, 3, 1, 1, True)]}
POOLS = {'lenet': [(6, 28), (16, 10)], 'resnet': [(24, 28)]}

def cases(N, rng, shapes):
    "(name, ours, theirs or None) for each layer of the chosen shapes: closures that run one forward + backward"
    out = []
    for name, C, H, Fo, k, stride, pad, input_grad in [c for s in shapes for c in CONVS[s]]:
        x = rng.standard_normal((N, C, H, H), dtype=np.float32)
        conv = Conv2D(C, Fo, k, stride=stride, padding=pad, rng=0)
        conv.needs_input_grad = input_grad   # LeNet's first conv never needs the image's gradient; neither does torch's
        g = rng.standard_normal(conv(x).shape, dtype=np.float32)
        def ours(conv=conv, x=x, g=g): conv.forward(x); conv.backward(g)
        theirs = None
        if torch is not None:
            xt = torch.from_numpy(x).requires_grad_(input_grad)
            wt, bt = torch.from_numpy(conv.params['w'].copy()).requires_grad_(), torch.zeros(Fo, requires_grad=True)
            gt, inputs = torch.from_numpy(g), ((xt,) if input_grad else ()) + (wt, bt)
            def theirs(xt=xt, wt=wt, bt=bt, gt=gt, inputs=inputs, pad=pad, stride=stride):
                torch.autograd.grad(F.conv2d(xt, wt, bt, stride=stride, padding=pad), inputs, gt)
        out.append((name, ours, theirs))
    for C, H in [c for s in shapes for c in POOLS[s]]:
        x = np.maximum(rng.standard_normal((N, C, H, H), dtype=np.float32), 0)   # after a ReLU: many ties at 0
        pool = MaxPool2D(2)
        g = rng.standard_normal(pool(x).shape, dtype=np.float32)
        def ours(pool=pool, x=x, g=g): pool.forward(x); pool.backward(g)
        theirs = None
        if torch is not None:
            xt, gt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(g)
            def theirs(xt=xt, gt=gt): torch.autograd.grad(F.max_pool2d(xt, 2), (xt,), gt)
        out.append((f'MaxPool2D 2x2 on ({N},{C},{H},{H})', ours, theirs))
    return out

def per_call_ms(f, inner):
    t = time.perf_counter()
    for _ in range(inner): f()
    return (time.perf_counter() - t) / inner * 1e3

def main():
    print(f'numpy {np.__version__}, torch {torch.__version__ if torch else "not installed (our numbers only)"}, '
          f'threads {args.threads}, batch {args.batch}, float32, cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}')
    rows = []
    for name, ours, theirs in cases(args.batch, np.random.default_rng(0), args.shapes.split(',')):
        fns = [ours] + ([theirs] if theirs else [])
        for f in fns: f(); f()                         # warm-up: allocations, BLAS threads, torch's dispatch
        times = [[] for _ in fns]
        for r in range(args.repeats):
            order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))   # alternate who goes first
            for k in order:
                time.sleep(args.settle)
                times[k].append(per_call_ms(fns[k], args.inner))
        rows.append((name, *[float(np.median(t)) for t in times]))
    print(f"\n| {'layer (forward + backward)':38s} | ours ms | torch ms | ours/torch |")
    print(f"| {'-'*38} | ------: | -------: | ---------: |")
    for name, ours_ms, *theirs_ms in rows:
        if theirs_ms: print(f'| {name:38s} | {ours_ms:7.2f} | {theirs_ms[0]:8.2f} | {ours_ms / theirs_ms[0]:10.2f} |')
        else: print(f'| {name:38s} | {ours_ms:7.2f} | {"-":>8s} | {"-":>10s} |')

if __name__ == '__main__': main()
