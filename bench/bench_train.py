"""Training speed of the MNIST MLP, LeNet-5 and chapter 9's ResNet: tinynn-book against PyTorch on the CPU, in the same run.

Both frameworks train the identical bare architecture (tinynn_book.mnist.mlp / lenet, tinynn_book.cnn.resnet: no
RandomShift, no weight decay) with softmax cross-entropy, Adam(lr=1e-3), batch 128, float32, PyTorch on torch.set_num_threads(2). Each repeat times `--steps` training
steps of ours, then of PyTorch's, alternating (so a noisy neighbour hurts both alike); the table gives the
median over repeats of the seconds per step, extrapolated to seconds per epoch (469 steps = 60 000 images at
batch 128), and the ratio ours / PyTorch. Then, in a fresh subprocess per framework and model (--rss-models), one real epoch
(`fit`, 60 000 training images and evaluation on 10 000) and its peak resident set size: the kernel's peak
mark VmHWM, reset just before the epoch (echo 5 > /proc/self/clear_refs) and read after it, so loading the
data does not count; where that reset is not allowed, resource.getrusage(RUSAGE_SELF).ru_maxrss, which does
include it. Next to it, the RSS before the epoch (VmRSS; the float32 data alone is 219 MB).

Each thread count (--threads, default 1 and 2: OpenBLAS for numpy, torch.set_num_threads for PyTorch) runs in
--runs fresh processes; the table reports, per model and thread count, the median over runs of each run's median
step time, and the spread (lowest-highest) of the runs, so a reader can tell the machine's noise from a difference.

Everything the tables print is also written, with the date, the machine and the load average before and after,
to bench/results/train.json (--results PATH elsewhere, --results '' not at all): the book's chapter 6 and front page
read their speed numbers from that committed file, so every page quotes the same run.

PyTorch is an optional benchmark dependency (pip install torch): without it only our columns are printed.
Usage: python bench/bench_train.py [--models mlp,lenet,resnet] [--threads 1,2] [--runs 5] [--steps 30] [--repeats 5]
       [--rss-models lenet,resnet] [--no-rss] [--results PATH]
"""
import argparse, datetime, json, os, platform, resource, statistics, subprocess, sys, time
from pathlib import Path

import _threads  # noqa: F401  (sets the BLAS thread count from --child-threads before numpy loads)
import numpy as np

BATCH, LR, STEPS_PER_EPOCH = 128, 1e-3, -(-60_000 // 128)

def data(n_train=60_000, n_test=10_000):
    "Real MNIST if $TINYNN_BOOK_DATA is set, else random images of the same shape (speed and memory do not care)"
    from tinynn_book.mnist import load_mnist
    if os.environ.get('TINYNN_BOOK_DATA'): return load_mnist()
    rng = np.random.default_rng(0)
    make = lambda n: (rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n))
    return make(n_train), make(n_test)

def batches(x, y, steps, seed=0):
    idx = np.random.default_rng(seed).permutation(len(x))
    return [(x[idx[i*BATCH % len(x):][:BATCH]], y[idx[i*BATCH % len(x):][:BATCH]]) for i in range(steps)]

def ours(name):
    import tinynn_book.cnn  # registers chapter 9's 'resnet' with make_model
    from tinynn_book.mnist import make_model
    model = make_model(name, LR, seed=0, weight_decay=0, max_shift=0)  # the bare architecture, as PyTorch's twin
    return lambda xb, yb: model.train_step(xb, yb)

def torch_resnet():
    "Chapter 9's ResNet (tinynn_book.cnn.resnet) in PyTorch: the same layers, shapes and parameter count (174 346)"
    import torch, torch.nn as nn
    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.f = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU(),
                                   nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out))
            reshapes = stride != 1 or c_in != c_out
            self.s = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out)) if reshapes else nn.Identity()
        def forward(self, x): return torch.relu(self.f(x) + self.s(x))
    return nn.Sequential(nn.Conv2d(1, 24, 3, 1, 1), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2),
                         Block(24, 24, 1), Block(24, 48, 2), Block(48, 96, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10))

def torch_net(name):
    import torch.nn as nn
    if name == 'resnet': return torch_resnet()
    if name == 'mlp':
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 100), nn.ReLU(), nn.Linear(100, 10))
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))

def theirs(name):
    import torch
    import tinynn_book.cnn  # registers 'resnet'
    from tinynn_book.mnist import MODELS
    torch.manual_seed(0)
    net = torch_net(name)
    ours_count, theirs_count = sum(p.size for p in MODELS[name](rng=0).params.values()), sum(p.numel() for p in net.parameters())
    if ours_count != theirs_count:  # the twins are written by hand: catch one that drifted from our builder
        sys.exit(f"PyTorch's {name} has {theirs_count} parameters and ours {ours_count}: they are not the same architecture")
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
        return loss.item()
    return step

def seconds_per_step(step, batch_list, warmup=3):
    for xb, yb in batch_list[:warmup]: step(xb, yb)
    t = time.perf_counter()
    for xb, yb in batch_list: step(xb, yb)
    return (time.perf_counter() - t) / len(batch_list)

def status_mb(key):
    "A memory figure of this process from /proc/self/status (Linux), in MB"
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'): return int(line.split()[1]) / 1024
    return float('nan')

def reset_peak():
    "Reset the kernel's peak-RSS mark (VmHWM) so it measures from now on; False where that is not possible"
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        return True
    except OSError: return False

def rss_child(framework, name):
    "One epoch of model `name`, in this (fresh) process; prints JSON with times and memory"
    (x, y), (xt, yt) = data()
    if framework == 'ours':
        import tinynn_book.cnn  # registers 'resnet'
        from tinynn_book.mnist import make_model
        model = make_model(name, LR, seed=0, weight_decay=0, max_shift=0)
        before, exact = status_mb('VmRSS'), reset_peak()
        t = time.perf_counter()
        model.fit(x, y, epochs=1, batch_size=BATCH, validation_data=(xt, yt), seed=0, progress=False, verbose=False)
    else:
        import torch
        torch.set_num_threads(2)
        net, (x, y, xt) = torch_net(name), (torch.from_numpy(x), torch.from_numpy(np.asarray(y, np.int64)), torch.from_numpy(xt))
        opt, loss_fn = torch.optim.Adam(net.parameters(), lr=LR), torch.nn.CrossEntropyLoss()
        before, exact = status_mb('VmRSS'), reset_peak()
        t = time.perf_counter()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad(set_to_none=True); loss_fn(net(x[idx]), y[idx]).backward(); opt.step()
        net.eval()
        with torch.no_grad(): [net(xt[i:i + 1000]) for i in range(0, len(xt), 1000)]
    seconds = time.perf_counter() - t
    # VmHWM after a reset is the peak of the epoch alone; ru_maxrss (Linux: kB) would include loading the data
    peak = status_mb('VmHWM') if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(framework=framework, seconds=seconds, rss_before_mb=before, peak_rss_mb=peak,
                          peak_source='VmHWM after reset' if exact else 'ru_maxrss (includes data loading)')))

def child(args):
    "One process, one thread count: interleaved timings of each model, printed as JSON (seconds per step)"
    threads = int(args.child_threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError: torch = None
    (x, y), _ = data(n_train=6000, n_test=10)
    models = args.models.split(',')
    steps = {m: batches(x, y, args.steps + 3) for m in models}
    torch_steps = {m: [(torch.from_numpy(a), torch.from_numpy(np.asarray(b, np.int64))) for a, b in s] for m, s in steps.items()} if torch else {}
    runners = {m: (ours(m), theirs(m) if torch else None) for m in models}
    times = {m: ([], []) for m in models}
    for r in range(args.repeats):
        for m in models:
            times[m][0].append(seconds_per_step(runners[m][0], steps[m]))
            if torch: times[m][1].append(seconds_per_step(runners[m][1], torch_steps[m]))
    print(json.dumps({m: dict(ours=statistics.median(t[0]), torch=statistics.median(t[1]) if torch else None)
                      for m, t in times.items()}))

def spread(values, fmt):
    "median (lowest-highest)"
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"

def summary(values):
    "Median, lowest and highest of a list of numbers, as a dict"
    return dict(median=statistics.median(values), low=min(values), high=max(values))

def machine(torch_version):
    "What the results were measured on"
    return dict(processor=platform.processor() or platform.machine(), cpus=os.cpu_count(), system=platform.platform(),
                python=platform.python_version(), numpy=np.__version__, torch=torch_version,
                blas=_blas_name())

def _blas_name():
    "The BLAS numpy was built against (numpy >= 1.25 reports it), else None"
    try: return np.show_config(mode='dicts')['Build Dependencies']['blas']['name']
    except Exception: return None

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--threads', default='1,2', help='thread counts to measure, comma-separated')
    p.add_argument('--runs', type=int, default=5, help='fresh processes per thread count')
    p.add_argument('--steps', type=int, default=30, help='timed training steps per repeat and framework')
    p.add_argument('--repeats', type=int, default=5, help='interleaved repeats inside one process (median taken)')
    p.add_argument('--models', default='mlp,lenet')
    p.add_argument('--json', metavar='PATH', help='also write the raw per-run results here')
    p.add_argument('--no-rss', action='store_true', help='skip the epoch memory measurement')
    p.add_argument('--results', default=str(Path(__file__).parent/'results'/'train.json'),
                   help="write the summary here as JSON (the file the book reads); '' to skip")
    p.add_argument('--rss-models', default='lenet', help='models whose epoch memory is measured, comma-separated')
    p.add_argument('--rss-child', choices=['ours', 'torch'], help=argparse.SUPPRESS)
    p.add_argument('--rss-model', help=argparse.SUPPRESS)
    p.add_argument('--child-threads', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child: return rss_child(args.rss_child, args.rss_model)
    if args.child_threads: return child(args)

    try: import torch; tv = torch.__version__
    except ImportError: torch, tv = None, None
    load_before, started = os.getloadavg(), datetime.datetime.now(datetime.timezone.utc)
    if torch is None: print('PyTorch not installed: timing tinynn-book only (pip install torch for the comparison)')
    print(f"{datetime.date.today()}; {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; python {platform.python_version()}, "
          f"numpy {np.__version__}" + (f", torch {tv}" if tv else '') + f"; batch {BATCH}, Adam lr {LR}, float32")
    print(f"{args.runs} fresh processes per thread count; each: {args.repeats} interleaved repeats of {args.steps} steps, median")
    models, results = args.models.split(','), {}
    for t in args.threads.split(','):
        for r in range(args.runs):
            out = subprocess.run([sys.executable, __file__, '--child-threads', t, '--steps', str(args.steps),
                                  '--repeats', str(args.repeats), '--models', args.models], capture_output=True, text=True)
            if out.returncode: sys.exit(f"child failed: {out.stderr[-2000:]}")
            results.setdefault(t, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  threads {t}, run {r + 1}/{args.runs}: " + ', '.join(
                f"{m} {1e3 * v['ours']:.1f} ms" + (f" vs torch {1e3 * v['torch']:.1f} ms" if v['torch'] else '')
                for m, v in results[t][-1].items()), flush=True)
    if args.json: Path(args.json).write_text(json.dumps(results, indent=1))
    ms = lambda v: f"{1e3 * v:.1f}"
    ratio = lambda v: f"{v:.2f}x"
    print(f"\n| model | threads | ours ms/step | PyTorch ms/step | ours / PyTorch |")
    print(f"| --- | ---: | ---: | ---: | ---: |")
    for m in models:
        for t, runs in results.items():
            a = [run[m]['ours'] for run in runs]
            b = [run[m]['torch'] for run in runs] if torch else None
            print(f"| {m} | {t} | {spread(a, ms)} | " +
                  (f"{spread(b, ms)} | {spread([x / y for x, y in zip(a, b)], ratio)} |" if b else "- | - |"))
    print(f"(median over {args.runs} runs, lowest-highest run in brackets; one epoch = {STEPS_PER_EPOCH} steps)")
    steps = {m: {t: dict(ours_ms=summary([1e3 * run[m]['ours'] for run in runs]),
                         torch_ms=summary([1e3 * run[m]['torch'] for run in runs]) if torch else None,
                         ratio=summary([run[m]['ours'] / run[m]['torch'] for run in runs]) if torch else None)
                 for t, runs in results.items()} for m in models}
    record = dict(benchmark='bench/bench_train.py', command='python bench/bench_train.py ' + ' '.join(sys.argv[1:]),
                  date=started.strftime('%Y-%m-%d'), started_utc=started.strftime('%Y-%m-%dT%H:%M:%SZ'),
                  machine=machine(tv), load_average_before=list(load_before),
                  settings=dict(batch_size=BATCH, lr=LR, optimizer='Adam', dtype='float32', runs=args.runs,
                                repeats=args.repeats, steps=args.steps, steps_per_epoch=STEPS_PER_EPOCH),
                  notes='per model and thread count: median over runs of each run\'s median ms per step, '
                        'low/high = fastest/slowest run; ratio = ours / PyTorch per run (same process), then summarised',
                  steps=steps, epoch_memory=[], raw_runs=results)
    def write():
        if not args.results: return
        record['load_average_after'] = list(os.getloadavg())
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(record, indent=1) + '\n')
    write()

    if args.no_rss: return print(f"results written to {args.results}" if args.results else '')
    print('\nOne epoch (60 000 images + evaluation on 10 000), each framework in a fresh process, 2 threads:')
    print('| model | framework | epoch s | RSS before the epoch MB | peak RSS during the epoch MB | how the peak was measured |')
    print('| --- | --- | ---: | ---: | ---: | --- |')
    for name in args.rss_models.split(','):
        for fw in ['ours'] + (['torch'] if torch else []):
            out = subprocess.run([sys.executable, __file__, '--rss-child', fw, '--rss-model', name], capture_output=True, text=True)
            if out.returncode: print(f"| {name} | {fw} | failed: {out.stderr.strip().splitlines()[-1]} | | | |"); continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            record['epoch_memory'].append({**r, 'model': name, 'framework': 'tinynn-book' if fw == 'ours' else 'PyTorch'})
            print(f"| {name} | {'tinynn-book' if fw == 'ours' else 'PyTorch'} | {r['seconds']:.1f} | {r['rss_before_mb']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['peak_source']} |", flush=True)
    write()
    if args.results: print(f"results written to {args.results}")

if __name__ == '__main__': main()
