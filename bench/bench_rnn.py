"""Chapter 11's Tiny Shakespeare LSTM against a PyTorch twin, in the same run: validation loss and step time.

The model: Embedding(V, 64) -> LSTM(64, 256) -> Linear(256, V) (tinynn_book.rnn.char_lm). The twin is the same
network in PyTorch (nn.Embedding, nn.LSTM(batch_first=True), nn.Linear), started from *our* initial weights
(copied in, transposed where PyTorch stores the transpose), so both start from the same point of the same
initialisation scheme (PyTorch's). The recipe: random 64-character windows of the first 90 % of the text (nanoGPT's
split), batch 32, Adam(2e-3), gradient clipping at global norm 1.0, --iters iterations; both models see the same
batches (one numpy generator, seeded). The validation loss is the mean cross-entropy over the last 10 % of the text
cut into consecutive 64-character windows (tinynn_book.rnn.stream_loss; the twin is scored on the same windows).

Step time: in a fresh process per thread count (OpenBLAS for numpy and torch.set_num_threads, set before either
loads), --pairs training steps of each framework, alternating ABBA so that a noisy neighbour hurts both alike;
reported: the median seconds per step of each, their spread (lowest-highest), and the median over pairs of the
ratio ours / PyTorch. The training run itself runs with --train-threads (default 1: on a machine shared with other work, two BLAS
threads fight for the cores) and records its own per-step times too.

Results go to bench/results/rnn.json (chapter 11 reads that file). Needs the corpus: --text FILE, or
TINYNN_BOOK_TEXT naming the folder holding tinyshakespeare.txt (else the bundled 150 KB sample, and the file says so).
Usage: python bench/bench_rnn.py [--iters 2000] [--pairs 40] [--threads 1,2] [--text PATH] [--skip-train]
"""
import argparse, datetime, json, os, platform, statistics, subprocess, sys, time
from pathlib import Path

def _arg(name, default):
    for i, a in enumerate(sys.argv):
        if a == name: return sys.argv[i + 1]
    return default
for _var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ[_var] = _arg('--child-threads', '2')
import numpy as np

CONTEXT, BATCH, LR, CLIP, EMB, HIDDEN = 64, 32, 2e-3, 1.0, 64, 256
RESULTS = Path(__file__).resolve().parent / 'results' / 'rnn.json'


def setup(text_path, seed=0):
    "Both models from the same initial weights, and the data"
    import torch
    from tinynn_book.rnn import CharVocab, char_lm, load_shakespeare, shakespeare_split, SequenceCrossEntropy
    from tinynn_book.model import Model
    from tinynn_book.optim import Adam
    text = load_shakespeare(text_path)
    vocab = CharVocab.from_text(text)
    train, val = shakespeare_split(vocab.encode(text))
    net = char_lm(len(vocab), EMB, HIDDEN, 'lstm', rng=seed)
    ours = Model(net, SequenceCrossEntropy(), Adam(LR))

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lstm = torch.nn.Embedding(len(vocab), EMB), torch.nn.LSTM(EMB, HIDDEN, batch_first=True)
            self.head = torch.nn.Linear(HIDDEN, len(vocab))
        def forward(self, x): return self.head(self.lstm(self.emb(x))[0])
    twin = Twin()
    e, r, h = (layer.params for layer in net.layers)
    with torch.no_grad():
        twin.emb.weight.copy_(torch.from_numpy(e['w']))
        for k in ('ih', 'hh'):
            getattr(twin.lstm, f'weight_{k}_l0').copy_(torch.from_numpy(r[f'w_{k}'].T))
            getattr(twin.lstm, f'bias_{k}_l0').copy_(torch.from_numpy(r[f'b_{k}']))
        twin.head.weight.copy_(torch.from_numpy(h['w'].T)); twin.head.bias.copy_(torch.from_numpy(h['b']))
    opt = torch.optim.Adam(twin.parameters(), lr=LR)
    return dict(text=text, vocab=vocab, train=train, val=val, ours=ours, twin=twin, opt=opt)


def ours_step(s, x, y):
    from tinynn_book.rnn import clipped_step
    return clipped_step(s['ours'], x, y, CLIP)[0]

def twin_step(s, x, y):
    import torch
    twin, opt = s['twin'], s['opt']
    logits = twin(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1))
    opt.zero_grad(set_to_none=True); loss.backward()
    torch.nn.utils.clip_grad_norm_(twin.parameters(), CLIP)
    opt.step()
    return float(loss)

def twin_val(s):
    import torch
    ids = s['val']; n = (len(ids) - 1) // CONTEXT
    x, y = ids[:n * CONTEXT].reshape(n, CONTEXT), ids[1:n * CONTEXT + 1].reshape(n, CONTEXT)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, 64):
            logits = s['twin'](torch.from_numpy(x[i:i + 64]))
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             torch.from_numpy(y[i:i + 64]).reshape(-1))) * len(x[i:i + 64])
    return total / n


def child_train(args):
    "The 2000-iteration run of both, same batches, interleaved; the loss curves, the validation losses and samples"
    import torch
    from tinynn_book.rnn import random_windows, stream_loss, generate
    torch.manual_seed(0); torch.set_num_threads(int(args.child_threads))
    s = setup(args.text)
    rng = np.random.default_rng(1)
    curve, times = {'ours': [], 'pytorch': []}, {'ours': [], 'pytorch': []}
    for it in range(args.iters):
        x, y = random_windows(s['train'], CONTEXT, BATCH, rng)
        order = [('ours', ours_step), ('pytorch', twin_step)][::(1 if it % 2 == 0 else -1)]
        for name, step in order:
            t0 = time.perf_counter(); loss = step(s, x, y); times[name].append(time.perf_counter() - t0)
            curve[name].append(loss)
    val = {'ours': stream_loss(s['ours'].net, s['val'], CONTEXT), 'pytorch': twin_val(s)}
    prompt = s['vocab'].encode('ROMEO:\n')
    for layer in s['ours'].net.layers: getattr(layer, 'reset_state', lambda: None)()
    s['ours'].net.layers[1].carry = True
    page = generate(s['ours'].net, prompt, 600, temperature=0.8, rng=0, incremental=True)
    s['ours'].net.layers[1].carry = False; s['ours'].net.layers[1].reset_state()
    out = dict(iters=args.iters, val_loss=val, train_loss_last100={k: float(np.mean(v[-100:])) for k, v in curve.items()},
               curve_every50={k: [float(np.mean(v[i:i + 50])) for i in range(0, len(v), 50)] for k, v in curve.items()},
               train_step_median_s={k: statistics.median(v) for k, v in times.items()},
               sample=s['vocab'].decode(page[0]), threads=int(args.child_threads))
    ours_path = Path(args.save) if args.save else None
    if ours_path: s['ours'].save(ours_path)
    print(json.dumps(out))


def child_time(args):
    "ABBA-interleaved step times of both at this process's thread count"
    import torch
    from tinynn_book.rnn import random_windows
    torch.manual_seed(0); torch.set_num_threads(int(args.child_threads))
    s = setup(args.text)
    rng = np.random.default_rng(2)
    batches = [random_windows(s['train'], CONTEXT, BATCH, rng) for _ in range(args.pairs + 3)]
    for x, y in batches[:3]: ours_step(s, x, y); twin_step(s, x, y)   # warm-up
    t = {'ours': [], 'pytorch': []}
    for i, (x, y) in enumerate(batches[3:]):
        order = [('ours', ours_step), ('pytorch', twin_step)][::(1 if i % 2 == 0 else -1)]
        for name, step in order:
            t0 = time.perf_counter(); step(s, x, y); t[name].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(t['ours'], t['pytorch'])]
    print(json.dumps(dict(threads=int(args.child_threads), pairs=args.pairs,
                          median_s={k: statistics.median(v) for k, v in t.items()},
                          spread_s={k: [min(v), max(v)] for k, v in t.items()},
                          ratio_median=statistics.median(ratios), ratio_spread=[min(ratios), max(ratios)])))


def run_child(mode, threads, args):
    cmd = [sys.executable, __file__, '--mode', mode, '--child-threads', str(threads), '--iters', str(args.iters),
           '--pairs', str(args.pairs)] + (['--text', args.text] if args.text else []) + (['--save', args.save] if args.save else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--mode', default='parent'); p.add_argument('--child-threads', default='2')
    p.add_argument('--iters', type=int, default=2000); p.add_argument('--pairs', type=int, default=40)
    p.add_argument('--threads', default='1,2'); p.add_argument('--text', default=None)
    p.add_argument('--save', default=None, help='write our trained model here (a checkpoint)')
    p.add_argument('--train-threads', type=int, default=1, help='threads of the training run (1: a shared machine)')
    p.add_argument('--skip-train', action='store_true'); p.add_argument('--out', default=str(RESULTS))
    args = p.parse_args()
    if args.mode == 'train': return child_train(args)
    if args.mode == 'time': return child_time(args)
    import torch
    corpus = 'Tiny Shakespeare' if (args.text or os.environ.get('TINYNN_BOOK_TEXT')) else 'the bundled 150 KB sample'
    out = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), corpus=corpus,
               machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", numpy=np.__version__,
               torch=torch.__version__, recipe=dict(context=CONTEXT, batch=BATCH, lr=LR, clip=CLIP, embedding=EMB, hidden=HIDDEN),
               load_before=os.getloadavg())
    path = Path(args.out)
    old = json.loads(path.read_text()) if path.exists() else {}
    out['timing'] = [run_child('time', n, args) for n in args.threads.split(',')]
    if args.skip_train:   # the training run keeps its own date and corpus (the top-level ones are the timing's)
        out['train'] = old.get('train') and {'date': old.get('date'), 'corpus': old.get('corpus'), **old['train']}
    else: out['train'] = {'date': out['date'], 'corpus': corpus, **run_child('train', args.train_threads, args)}
    out['load_after'] = os.getloadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + '\n')
    print(json.dumps({k: v for k, v in out.items() if k != 'train'}, indent=1))
    if out['train']: print('val loss', out['train']['val_loss'])

if __name__ == '__main__':
    main()
