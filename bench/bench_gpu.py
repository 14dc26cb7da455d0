"""Training speed on one NVIDIA GPU: tinynn-book on CuPy (with and without chapter 10's fused kernels) against PyTorch CUDA, in the same run.

Three networks (chapter 6's MLP 784-400-100-10 and LeNet-5, chapter 10's wide CNN: conv 32, conv 32, pool, conv 64,
conv 64, pool, Dense 256, Dense 10; 3x3 kernels, padding 1) train with softmax cross-entropy and Adam(lr=1e-3) in
float32, at batch 128 and 1024. The batches are moved to the GPU before timing, for both frameworks, so the table
measures training steps, not transfers. Each repeat times --steps steps of each variant in turn (ours with the fused
kernels, ours with the chapters' numpy code only, PyTorch), synchronising the GPU before reading the clock; the table
gives the median over --repeats of the milliseconds per step, with the range, and the ratios to PyTorch.

Targets (DESIGN.md, issue 11): MLP and LeNet-5 <= 1.5x PyTorch at batch 1024, the wide CNN <= 2x.
Needs CuPy and a GPU (pip install -e ".[gpu]"), and PyTorch with CUDA for the comparison columns.
Usage: python bench/bench_gpu.py [--models mlp,lenet,wide] [--batches 128,1024] [--steps 50] [--repeats 7] [--json PATH]
"""
import argparse, datetime, json, platform, statistics, sys, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
LR = 1e-3

def ours(name, fused, device='gpu'):
    "A train_step on the GPU for our network `name`: the fused kernels on or off"
    from tinynn_book.tensor import get_device
    from tinynn_book.mnist import MODELS
    from tinynn_book.backend import wide_cnn
    from tinynn_book.model import Model
    from tinynn_book.losses import SoftmaxCrossEntropy
    from tinynn_book.optim import Adam
    net = wide_cnn(rng=0) if name == 'wide' else MODELS[name](rng=0)
    model, gpu = Model(net, SoftmaxCrossEntropy(), Adam(LR)).to(device), get_device(device)
    def step(xb, yb):
        if fused: return model.train_step(xb, yb)
        saved = dict(gpu.kernels); gpu.kernels.clear()   # the chapters' numpy code, run by CuPy kernel by kernel
        try: return model.train_step(xb, yb)
        finally: gpu.kernels.update(saved)
    return step, sum(p.size for p in net.params.values())

def torch_wide():
    import torch.nn as nn
    conv = lambda c_in, c_out: nn.Conv2d(c_in, c_out, 3, padding=1)
    return nn.Sequential(conv(1, 32), nn.ReLU(), conv(32, 32), nn.ReLU(), nn.MaxPool2d(2), conv(32, 64), nn.ReLU(),
                         conv(64, 64), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 10))

def theirs(name, count):
    import torch
    from bench_train import torch_net   # the CPU benchmark's twins of the MLP and LeNet-5
    torch.manual_seed(0)
    net = (torch_wide() if name == 'wide' else torch_net(name)).cuda()
    if sum(p.numel() for p in net.parameters()) != count: sys.exit(f"PyTorch's {name} does not have our {count} parameters")
    opt, loss_fn = torch.optim.Adam(net.parameters(), lr=LR), torch.nn.CrossEntropyLoss()
    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb); loss.backward(); opt.step()
        return loss   # no .item(): that would synchronise every step, which our float loss does (see the chapter)
    return step

def ms_per_step(step, batches, sync, warmup=5):
    for xb, yb in batches[:warmup]: step(xb, yb)
    sync(); t = time.perf_counter()
    for xb, yb in batches: step(xb, yb)
    sync()
    return (time.perf_counter() - t) / len(batches) * 1e3

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', default='mlp,lenet,wide')
    p.add_argument('--batches', default='128,1024')
    p.add_argument('--steps', type=int, default=50, help='timed steps per repeat and variant')
    p.add_argument('--repeats', type=int, default=7, help='interleaved repeats (median and range reported)')
    p.add_argument('--runs', type=int, default=None, help='alias of --repeats')
    p.add_argument('--json', metavar='PATH', help='also write the raw timings here')
    p.add_argument('--device', default='gpu', help=argparse.SUPPRESS)  # 'standin': a dry run of this script on a CPU (tests)
    args = p.parse_args()
    repeats = args.runs or args.repeats
    from tinynn_book.tensor import get_device, to_device
    from tinynn_book.backend import synchronize
    if args.device == 'standin':
        from tinynn_book.backend import standin_device, twin_kernels
        standin_device(twin_kernels()); torch = tv = None; name = 'stand-in device (numpy), a dry run'
    else:
        try: get_device('gpu')
        except RuntimeError as e: sys.exit(f"bench_gpu: {e}")
        import cupy
        try:
            import torch
            if not torch.cuda.is_available(): raise ImportError('PyTorch without CUDA')
            tv = torch.__version__
        except ImportError as e: torch, tv = None, None; print(f'PyTorch with CUDA not available ({e}): our columns only')
        name = f"{cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, cupy {cupy.__version__}"
    sync = lambda: (synchronize(args.device), torch.cuda.synchronize() if torch else None)
    print(f"{datetime.date.today()}; {name}; python {platform.python_version()}, numpy {np.__version__}"
          + (f", torch {tv}" if tv else '') + f"; Adam lr {LR}, float32")
    print(f"{repeats} interleaved repeats of {args.steps} steps per variant; median ms per step (lowest-highest)")
    rng, results = np.random.default_rng(0), {}
    for name in args.models.split(','):
        for batch in map(int, args.batches.split(',')):
            x = rng.random((8 * batch, 1, 28, 28), dtype=np.float32)
            if name == 'mlp': x = x.reshape(len(x), -1)
            y = rng.integers(0, 10, len(x))
            ours_batches = [(to_device(x[i:i + batch], args.device), to_device(y[i:i + batch], args.device)) for i in range(0, len(x), batch)]
            ours_batches = (ours_batches * (args.steps // len(ours_batches) + 1))[:args.steps + 5]
            fused, count = ours(name, True, args.device)
            variants = {'fused': fused, 'numpy code': ours(name, False, args.device)[0]}
            if torch:
                variants['torch'] = theirs(name, count)
                torch_batches = [(torch.as_tensor(xb, device='cuda'), torch.as_tensor(yb, device='cuda', dtype=torch.int64)) for xb, yb in ours_batches]
            times = {k: [] for k in variants}
            for _ in range(repeats):
                for k, step in variants.items():
                    times[k].append(ms_per_step(step, torch_batches if k == 'torch' else ours_batches, sync))
            results[f'{name}/{batch}'] = times
            cell = lambda v: f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
            line = f"{name:<6} batch {batch:>5}: ours fused {cell(times['fused'])}, numpy code {cell(times['numpy code'])}"
            if torch:
                ratio = lambda k: statistics.median(a / b for a, b in zip(times[k], times['torch']))
                line += f", PyTorch {cell(times['torch'])}; ratio fused {ratio('fused'):.2f}x, numpy code {ratio('numpy code'):.2f}x"
            print(line, flush=True)
    if args.json: Path(args.json).write_text(json.dumps(results, indent=1))

if __name__ == '__main__':
    main()
