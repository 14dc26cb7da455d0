"""Time per training iteration of chapter 12's GPT against a PyTorch twin, on the CPU, in the same process.

The configuration is nanoGPT's README configuration for a CPU: 65 characters, 4 blocks, 4 heads, width 128,
context 64, batch 12, AdamW (lr 1e-3, betas 0.9/0.99, weight decay 0.1 on matrices only), global-norm clipping at
1.0, float32. The twin has the same layers and shapes and starts from *our* initial weights, copied; both train on
the same batches (random windows of random ids: the time does not depend on the text). One iteration is a forward
pass, the loss, the backward pass, the clipping and the update.

Each thread count (--threads, default 1 and 2: OpenBLAS for numpy through OPENBLAS_NUM_THREADS, set before numpy
loads in a fresh child process, and torch.set_num_threads) runs in its own child process. There, after warm-up,
--pairs ABBA pairs are timed (ours, PyTorch, PyTorch, ours, each a block of --steps iterations), so that a busy
machine slows both alike; a pair's ratio is ours / PyTorch of that pair's two blocks each. The result is the median
milliseconds per iteration of each, and the median, lowest and highest ratio over the pairs. The machine's load
average (os.getloadavg) is recorded before and after, since the CPU may be shared.

Writes bench/results/gpt.json (the chapter reads it) and prints a table.
Usage: python bench/bench_gpt.py [--threads 1,2] [--pairs 6] [--steps 10]
"""
import argparse, datetime, json, os, platform, statistics, subprocess, sys, time
from pathlib import Path

import _threads  # noqa: F401  (sets the BLAS thread count from --child-threads before numpy loads)
import numpy as np

V, T, D, H, L, B = 65, 64, 128, 4, 4, 12

def ours():
    from tinynn_book.model import Model
    from tinynn_book.rnn import SequenceCrossEntropy, clipped_step
    from tinynn_book.transformer import GPT, GPTAdamW
    model = Model(GPT(V, T, D, H, L, rng=0), SequenceCrossEntropy(), GPTAdamW(1e-3, 0.9, 0.99, weight_decay=0.1))
    return model, lambda x, y: clipped_step(model, x, y, 1.0)[0]

def twin(gpt):
    "nanoGPT's model in PyTorch with the parameters of our `gpt` copied in (biases on, no weight tying)"
    import torch, torch.nn as nn, torch.nn.functional as F
    t = lambda a: nn.Parameter(torch.tensor(np.array(a)))
    class Block(nn.Module):
        def __init__(self, ours):
            super().__init__()
            (ln1, attn), (ln2, fc, _, proj) = ours.layers[0].block.layers[:2], ours.layers[1].block.layers
            self.ln1, self.ln2, self.qkv, self.out, self.fc, self.proj = (nn.LayerNorm(D), nn.LayerNorm(D),
                nn.Linear(D, 3 * D), nn.Linear(D, D), nn.Linear(D, 4 * D), nn.Linear(4 * D, D))
            for mod, layer in ((self.ln1, ln1), (self.ln2, ln2)):
                mod.weight, mod.bias = t(layer.params['gamma']), t(layer.params['beta'])
            for mod, w, b in ((self.qkv, attn.params['w_qkv'], attn.params['b_qkv']),
                              (self.out, attn.params['w_out'], attn.params['b_out']),
                              (self.fc, fc.params['w'], fc.params['b']), (self.proj, proj.params['w'], proj.params['b'])):
                mod.weight, mod.bias = t(w.T), t(b)
        def forward(self, x):
            N, S, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
            q, k, v = (a.view(N, S, H, D // H).transpose(1, 2) for a in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(N, S, D)
            x = x + self.out(y)
            return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate='tanh'))
    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
            self.tok.weight, self.pos.weight = t(gpt.layers[0].params['w']), t(gpt.layers[1].params['w'])
            self.blocks = nn.Sequential(*[Block(b) for b in gpt.blocks])
            self.ln, self.head = nn.LayerNorm(D), nn.Linear(D, V)
            self.ln.weight, self.ln.bias = t(gpt.layers[-2].params['gamma']), t(gpt.layers[-2].params['beta'])
            self.head.weight, self.head.bias = t(gpt.layers[-1].params['w'].T), t(gpt.layers[-1].params['b'])
        def forward(self, idx):
            return self.head(self.ln(self.blocks(self.tok(idx) + self.pos(torch.arange(idx.shape[1])))))
    net = GPT()
    groups = [{'params': [p for p in net.parameters() if p.ndim >= 2], 'weight_decay': 0.1},
              {'params': [p for p in net.parameters() if p.ndim < 2], 'weight_decay': 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    def step(x, y):
        loss = F.cross_entropy(net(torch.from_numpy(x)).view(-1, V), torch.from_numpy(y).view(-1))
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0); opt.step()
        return loss.item()
    return step

def child(threads, pairs, steps):
    import torch
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    batches = [tuple(rng.integers(0, V, (B, T)) for _ in range(2)) for _ in range(8)]
    model, step_ours = ours()
    step_torch = twin(model.net)
    first = step_ours(*batches[0]), step_torch(*batches[0])   # same weights, same batch: the same loss
    for i in range(1, 5): step_ours(*batches[i]); step_torch(*batches[i])   # warm-up
    def block(step):
        t0 = time.perf_counter()
        for i in range(steps): step(*batches[i % len(batches)])
        return (time.perf_counter() - t0) / steps
    load_before, rows = os.getloadavg()[0], []
    for _ in range(pairs):
        a1, b1, b2, a2 = block(step_ours), block(step_torch), block(step_torch), block(step_ours)
        rows.append(((a1 + a2) / 2, (b1 + b2) / 2))
    ratios = [a / b for a, b in rows]
    return dict(threads=threads, ours_ms=1e3 * statistics.median(a for a, _ in rows),
                torch_ms=1e3 * statistics.median(b for _, b in rows), ratio=statistics.median(ratios),
                ratio_min=min(ratios), ratio_max=max(ratios), first_loss_ours=first[0], first_loss_torch=first[1],
                load_before=load_before, load_after=os.getloadavg()[0])

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--threads', default='1,2'); p.add_argument('--pairs', type=int, default=6)
    p.add_argument('--steps', type=int, default=10); p.add_argument('--child-threads', type=int)
    p.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'gpt.json'))
    args = p.parse_args()
    if args.child_threads:
        print(json.dumps(child(args.child_threads, args.pairs, args.steps))); return
    rows = []
    for n in [int(s) for s in args.threads.split(',')]:
        r = subprocess.run([sys.executable, __file__, '--child-threads', str(n), '--pairs', str(args.pairs),
                            '--steps', str(args.steps)], capture_output=True, text=True, check=True)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"{n} thread(s): ours {rows[-1]['ours_ms']:.1f} ms, PyTorch {rows[-1]['torch_ms']:.1f} ms, "
              f"ratio {rows[-1]['ratio']:.2f} ({rows[-1]['ratio_min']:.2f}-{rows[-1]['ratio_max']:.2f}); "
              f"first loss {rows[-1]['first_loss_ours']:.5f} vs {rows[-1]['first_loss_torch']:.5f}", flush=True)
    import torch
    loads = [r[k] for r in rows for k in ('load_before', 'load_after')]
    result = dict(config=dict(vocab=V, context=T, d_model=D, n_heads=H, n_layers=L, batch=B), pairs=args.pairs,
                  steps=args.steps, rows=rows, load=f'{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores',
                  when=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                  numpy=np.__version__, torch=torch.__version__, python=platform.python_version())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + '\n')
    print(f'wrote {args.out}')

if __name__ == '__main__': main()
