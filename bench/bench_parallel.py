"""Data-parallel training steps (chapter 13): one worker, two threads, two MPI ranks, against PyTorch, in the same run.

Writes bench/results/parallel.json, which chapter 13 reads and shows (one number, one source). One command:

    python bench/bench_parallel.py [--models mlp,lenet,resnet] [--steps 30] [--repeats 7]

Every MNIST model is the bare architecture of bench/bench_train.py (no random shifts, no weight decay): softmax
cross-entropy, Adam(lr=1e-3), batch 128, float32, PyTorch with torch.set_num_threads(2). The ResNet's data-parallel
twins use synchronised BatchNorm (tinynn_book.parallel.SyncBatchNorm2d), so they train what one worker trains.
`--models gpt` times chapter 12's GPT instead, in bench/bench_gpt.py's nanoGPT CPU recipe (batch 12 × 64
characters, AdamW, the gradient summed over the workers clipped at 1.0, as tinynn-lm does), against the same
PyTorch twin; write it to its own file: `--models gpt --out bench/results/parallel_gpt.json`.

1. One process (`--child local`): our single-worker step (OpenBLAS with 2 threads), the same step shared by two
   threads (ThreadParallel, one BLAS thread each) and PyTorch's step, interleaved: every repeat times `--steps`
   steps of each, in an order that reverses from one repeat to the next (ABC CBA ...), so a noisy neighbour
   hurts all alike. Each repeat gives one seconds-per-step value per runner.
2. Two MPI ranks (`mpiexec -n 2 ... --child mpi`, one BLAS thread each): the step with one flat all-reduce
   after the backward pass, the step with bucketed all-reduces started during it (overlap), each rank's
   compute alone (forward, backward and update on its 64 images, no communication), and PyTorch's step on
   rank 0 while rank 1 sleeps (it waits in a non-blocking barrier, polling every half millisecond, so it
   leaves the cores to PyTorch). Times are rank 0's; a step ends when both ranks have finished it.
   Then MPI_Allreduce of float32 buffers of 1 to 4 Mi values, in place, in 5 timed blocks of many calls: the
   median and the fastest block's time per call (the fastest is the least disturbed by other jobs).

The JSON keeps every repeat's value (the chapter shows medians, the lowest-highest spread and the ratio per
repeat) and `uptime` before and after, since the timings mean little on a loaded machine.
"""
import argparse, datetime, json, os, platform, statistics, subprocess, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import numpy as np
from bench_train import BATCH, LR, batches, seconds_per_step, theirs

STEPS = {'mlp': 1.0, 'lenet': 1.0, 'resnet': 0.2, 'gpt': 0.2}   # fraction of --steps: the long steps get fewer

def batch_of(name): return 12 if name == 'gpt' else BATCH   # bench_gpt.B for the GPT

def gpt_model():
    "Chapter 12's GPT in nanoGPT's CPU recipe; its update clips the gradient summed over the workers, as tinynn-lm"
    from bench_gpt import ours as gpt   # imported late: it sets BLAS variables that only a fresh process reads
    from tinynn_book.rnn import clip_grad_norm
    model, _ = gpt()
    update = model.optimizer.step
    def clipped(pairs):
        pairs = list(pairs)
        clip_grad_norm([g for _, g in pairs], 1.0); update(pairs)
    model.optimizer.step = clipped
    return model

def their_step(name):
    "PyTorch's training step for `name`, started from our initial weights for the GPT"
    if name != 'gpt': return theirs(name)
    from bench_gpt import twin
    return twin(gpt_model().net)

def ours(name, **options):
    if name == 'gpt': return gpt_model()
    import tinynn_book.cnn  # registers 'resnet' with make_model
    from tinynn_book.mnist import make_model
    from tinynn_book.parallel import SyncBatchNorm2d
    if name == 'resnet': options.setdefault('norm', SyncBatchNorm2d)   # a plain FastBatchNorm2d for one worker
    return make_model(name, LR, seed=0, weight_decay=0, max_shift=0, **options)

def data(steps, name='mlp'):
    rng = np.random.default_rng(0)
    if name == 'gpt':   # random windows of random ids: the time does not depend on the text
        return [tuple(rng.integers(0, 65, (12, 64)) for _ in range(2)) for _ in range(steps + 3)]
    x, y = rng.random((6000, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 6000)
    return batches(x, y, steps + 3)

def torch_batches(b, name='mlp'):
    import torch
    if name == 'gpt': return b   # the twin's step takes numpy ids
    return [(torch.from_numpy(a), torch.from_numpy(np.asarray(c, np.int64))) for a, c in b]

def child_local(args):
    "One process: one worker, two threads, PyTorch; prints JSON {model: {runner: [seconds per step, ...]}}"
    import torch
    from tinynn_book.parallel import ThreadParallel
    torch.set_num_threads(2)
    out = {}
    for m in args.models.split(','):
        steps = max(3, int(args.steps * STEPS[m]))
        b = data(steps, m)
        one = ours(m, norm=None) if m == 'resnet' else ours(m)
        team = ThreadParallel(ours(m), 2)
        def threaded(xb, yb):
            return team.model.train_step(xb, yb)
        def timed_threads(bl):
            with team: return seconds_per_step(threaded, bl)
        runners = {'one': lambda bl: seconds_per_step(one.train_step, bl), 'threads': timed_threads,
                   'torch': lambda bl, s=their_step(m), tb=torch_batches(b, m): seconds_per_step(s, tb)}
        times = {k: [] for k in runners}
        for r in range(args.repeats):
            for k in (list(runners) if r % 2 == 0 else list(runners)[::-1]): times[k].append(runners[k](b))
        out[m] = times
    print(json.dumps(out))

def idle_wait(comm):
    "A barrier the waiting rank sleeps in, instead of spinning on a core the other rank needs"
    req = comm.Ibarrier()
    while not req.Test(): time.sleep(0.0005)

def child_mpi(args):
    "Two ranks: flat and bucketed all-reduce steps, compute alone, PyTorch on rank 0; then MPI_Allreduce times"
    import torch
    from mpi4py import MPI
    from tinynn_book.parallel import MPIParallel, blas_threads, shard_backward
    comm, rank = MPI.COMM_WORLD, MPI.COMM_WORLD.Get_rank()
    torch.set_num_threads(2)
    blas_threads(1)
    out, grad_floats = {}, {}
    for m in args.models.split(','):
        steps = max(3, int(args.steps * STEPS[m]))
        b = data(steps, m)
        flat, overlap = MPIParallel(ours(m), overlap=False), MPIParallel(ours(m), overlap=True)
        grad_floats[m] = int(flat.buffer.flat.size - 1 - flat.num_state)
        alone = ours(m, norm=None) if m == 'resnet' else ours(m)
        half = slice(rank * batch_of(m) // 2, (rank + 1) * batch_of(m) // 2)
        def compute(xb, yb):   # this rank's share of the work, with no communication at all
            shard_backward(alone.net, alone.loss, xb[half], yb[half], 0.5)
            alone.optimizer.step(alone.net.parameters())
        def timed(step, bl):
            comm.Barrier()
            t = seconds_per_step(step, bl)
            comm.Barrier()
            return comm.allreduce(t, op=MPI.MAX)
        def timed_torch(bl, s=their_step(m), tb=torch_batches(b, m)):
            t = seconds_per_step(s, tb) if rank == 0 else 0.0
            idle_wait(comm)
            return comm.bcast(t, root=0)
        runners = {'flat': lambda bl: timed(flat.step, bl), 'overlap': lambda bl: timed(overlap.step, bl),
                   'compute': lambda bl: timed(compute, bl), 'torch': timed_torch}
        times = {k: [] for k in runners}
        for r in range(args.repeats):
            for k in (list(runners) if r % 2 == 0 else list(runners)[::-1]): times[k].append(runners[k](b))
        flat.check_in_sync(); overlap.check_in_sync()
        out[m] = times
    sizes = sorted({4 ** k for k in range(12)} | set(grad_floats.values()))
    seconds, best = [], []
    for n in sizes:
        buf = np.ones(n, np.float32)
        calls = max(5, min(2000, int(2e6 // (n + 2000))))
        per_block = []
        for _ in range(5):
            comm.Barrier()
            t = time.perf_counter()
            for _ in range(calls): comm.Allreduce(MPI.IN_PLACE, buf)
            per_block.append(comm.allreduce((time.perf_counter() - t) / calls, op=MPI.MAX))
        seconds.append(statistics.median(per_block)); best.append(min(per_block))
    if rank == 0:
        allreduce = dict(floats=sizes, seconds=seconds, best=best)
        print(json.dumps(dict(steps=out, grad_floats=grad_floats, allreduce=allreduce)))

def uptime():
    try: return subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()
    except OSError: return None

def run(cmd, timeout):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode: sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', default='mlp,lenet,resnet')
    p.add_argument('--steps', type=int, default=30, help='timed steps per repeat and runner (the ResNet: a fifth)')
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--out', default=str(HERE / 'results' / 'parallel.json'))
    p.add_argument('--child', choices=['local', 'mpi'], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == 'local': return child_local(args)
    if args.child == 'mpi': return child_mpi(args)
    if 'gpt' in args.models.split(',') and args.models != 'gpt':
        p.error("time the GPT alone (its batch differs): --models gpt --out bench/results/parallel_gpt.json")
    import torch, mpi4py, shutil
    mpiexec = shutil.which('mpiexec', path=str(Path(sys.executable).parent)) or shutil.which('mpiexec')
    common = ['--models', args.models, '--steps', str(args.steps), '--repeats', str(args.repeats)]
    meta = dict(date=str(datetime.date.today()), uptime_before=uptime(), cpus=os.cpu_count(),
                machine=platform.processor() or platform.machine(), python=platform.python_version(),
                numpy=np.__version__, torch=torch.__version__, mpi4py=mpi4py.__version__, batch=batch_of(args.models.split(',')[0]),
                steps=args.steps, repeats=args.repeats, steps_per_model=STEPS)
    print(f"uptime: {meta['uptime_before']}", flush=True)
    local = run([sys.executable, __file__, '--child', 'local'] + common, timeout=3000)
    print('local done', flush=True)
    mpi = run([mpiexec, '-n', '2', sys.executable, __file__, '--child', 'mpi'] + common, timeout=3000)
    meta['uptime_after'] = uptime()
    result = dict(meta=meta, local=local, mpi=mpi['steps'], grad_floats=mpi['grad_floats'], allreduce=mpi['allreduce'])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + '\n')
    ms = lambda v: f"{1e3 * statistics.median(v):.1f} ({1e3 * min(v):.1f}-{1e3 * max(v):.1f})"
    for where, table in (('one process', local), ('two MPI ranks', mpi['steps'])):
        for m, times in table.items():
            print(f"{where:14} {m:7} " + '  '.join(f"{k} {ms(v)} ms" for k, v in times.items()))
    print(f"wrote {args.out}; uptime: {meta['uptime_after']}")

if __name__ == '__main__': main()
