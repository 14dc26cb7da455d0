"The tinynn-lm command (tinynn_book.cli_lm) from the outside: tiny configurations, offline, in seconds."
import contextlib, io, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
from tinynn_book import cli_lm
from tinynn_book.cli_lm import load_lm, main
from tinynn_book.model import Model

TINY = ['--context', '16', '--d-model', '16', '--heads', '2', '--layers', '1', '--batch-size', '4',
        '--eval-every', '5', '--warmup', '0', '--sample-tokens', '0']

def _run(*argv):
    "main(argv) in this process: (exit code, stdout, stderr); a SystemExit from argparse becomes its code"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main(list(argv))
        except SystemExit as e: code = e.code
        except KeyboardInterrupt: code = 'KeyboardInterrupt escaped main'
    return code, out.getvalue(), err.getvalue()

def _script():
    "The installed console script, or the module run with SIGINT's default handler restored (a child of a"
    " background job inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler)"
    code = ('import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); '
            'from tinynn_book.cli_lm import main; sys.exit(main())')
    return [sys.executable, '-c', code]

def _ctrl_c_keeps_the_completed_steps(tmp_path, monkeypatch, argv, done):
    "Ctrl-C inside step done + 1 of 50: exit 130, and a checkpoint bit for bit that of a run of `done` steps"
    calls, real = [], cli_lm.clip_grad_norm
    def clip(grads, max_norm):
        calls.append(1)
        if len(calls) == done + 1: raise KeyboardInterrupt
        return real(grads, max_norm)
    monkeypatch.setattr(cli_lm, 'clip_grad_norm', clip)
    code, out, err = _run(*argv, '--iters', '50', '--save', str(tmp_path / 'cut.npz'))
    assert code == 130 and err == f'tinynn-lm: interrupted after {done} of 50 steps\n', err
    monkeypatch.setattr(cli_lm, 'clip_grad_norm', real)
    assert _run(*argv, '--iters', str(done), '--save', str(tmp_path / 'done.npz'))[0] == 0
    cut, short = load_lm(tmp_path / 'cut.npz'), load_lm(tmp_path / 'done.npz')
    assert cut[2]['step'] == done
    for k, p in short[0].net.params.items(): assert cut[0].net.params[k].tobytes() == p.tobytes(), k

def _signal_after_two_evaluations(argv, sig):
    "Run the command `argv` in a subprocess, send it `sig` once it has printed two evaluations: (proc, stdout, stderr)"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'))
    try:
        evaluations, deadline = 0, time.monotonic() + 120
        for line in proc.stdout:
            evaluations += 'val_loss' in line
            if evaluations == 2 or time.monotonic() > deadline: break
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill()
    return proc, out, err


def test_entry_point_is_declared():
    text = (Path(__file__).parents[1] / 'settings.ini').read_text()
    assert 'tinynn-lm=tinynn_book.cli_lm:main' in text

def test_train_save_resume_sample(tmp_path):
    ckpt = tmp_path / 'g.npz'
    code, out, err = _run(*TINY, '--iters', '10', '--save', str(ckpt))
    assert code == 0, err
    assert out.count('val_loss') == 2 and f'checkpoint of step 10: {ckpt}' in out
    model, vocab, lm = load_lm(ckpt)
    assert lm['step'] == 10 and lm['options']['context'] == 16 and len(vocab) == len(set(vocab))
    assert Model.load(ckpt).net.config() == model.net.config()   # chapter 5's loader reads it too
    code, out, err = _run('--resume', str(ckpt), '--iters', '15', '--save', str(ckpt))
    assert code == 0 and 'steps 11-15' in out and load_lm(ckpt)[2]['step'] == 15, err
    code, out, err = _run('sample', str(ckpt), '--tokens', '40', '--temperature', '0.8', '--top-k', '5')
    assert code == 0 and len(out) == 1 + 40 + 1, out    # the prompt (a newline), 40 characters, print's newline
    assert set(out[1:-1]) <= set(vocab)

def test_a_resumed_run_draws_the_batches_of_the_uninterrupted_one(tmp_path):
    "Without AdamW's moments the weights differ, but the step count and the data stream continue"
    seen = []
    real = cli_lm.random_windows
    def spy(ids, context, batch_size, rng):
        x, y = real(ids, context, batch_size, rng); seen.append(x.copy()); return x, y
    cli_lm.random_windows = spy
    try:
        assert _run(*TINY, '--iters', '6', '--save', str(tmp_path / 'a.npz'))[0] == 0
        whole = seen[:]; seen.clear()
        assert _run(*TINY, '--iters', '3', '--save', str(tmp_path / 'b.npz'))[0] == 0
        assert _run('--resume', str(tmp_path / 'b.npz'), '--iters', '6')[0] == 0
    finally: cli_lm.random_windows = real
    assert all(np.array_equal(a, b) for a, b in zip(whole, seen)) and len(seen) == 6

def test_text_file_and_vocabulary_checks(tmp_path):
    text = tmp_path / 'poem.txt'
    text.write_text('the quick brown fox jumps over the lazy dog\n' * 30, encoding='utf-8')
    ckpt = tmp_path / 'p.npz'
    assert _run('--data', str(text), *TINY, '--iters', '3', '--save', str(ckpt))[0] == 0
    assert len(load_lm(ckpt)[1]) == len(set(text.read_text()))
    other = tmp_path / 'other.txt'; other.write_text('ZZZ!!! ' * 100)
    code, out, err = _run('--resume', str(ckpt), '--iters', '5', '--data', str(other))
    assert code == 1 and "lacks: '!', 'Z'" in err, err
    bad = tmp_path / 'bad.txt'; bad.write_bytes(b'\xff\xfe abc' * 50)
    code, out, err = _run('--data', str(bad), *TINY, '--iters', '2')
    assert code == 1 and 'is not UTF-8 text' in err, err
    code, out, err = _run('--data', str(tmp_path / 'missing.txt'), *TINY, '--iters', '2')
    assert code == 1 and 'cannot read' in err, err

@pytest.mark.parametrize('bad, message', [
    (['--iters', '0'], 'expected a positive int'), (['--lr', 'inf'], 'a finite number > 0'),
    (['--model', 'transformer'], 'invalid choice'), (['--dropout', '1'], 'a probability in [0, 1)'),
    (['--d-model', '10', '--heads', '4'], 'not divisible by --heads'), (['--save', ''], 'a non-empty name'),
    (['--resume', 'no-such.npz'], 'argument --resume'), (['--val-fraction', '0'], 'a fraction in (0, 1)'),
])
def test_bad_arguments_exit_2_before_any_text_is_read(monkeypatch, bad, message):
    monkeypatch.setattr(cli_lm, '_read_text', lambda args: pytest.fail('read the text before refusing'))
    code, out, err = _run(*bad)
    assert code == 2 and message in err, (bad, err)

def test_unwritable_save_and_sample_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_lm, '_read_text', lambda args: pytest.fail('read the text before refusing'))
    code, out, err = _run('--save', str(tmp_path))
    assert code == 2 and 'is a directory' in err
    code, out, err = _run('--save', str(tmp_path / 'no' / 'g.npz'))
    assert code == 2 and 'does not exist' in err
    for bad, message in ((['--temperature', '0'], 'a finite number > 0'), (['--top-k', '0'], 'a positive int')):
        code, out, err = _run('sample', 'x.npz', *bad)
        assert code == 2 and message in err
    other = tmp_path / 'plain.npz'
    from tinynn_book.layers import Dense
    from tinynn_book.losses import SoftmaxCrossEntropy
    from tinynn_book.optim import Adam
    Model([Dense(2, 3)], SoftmaxCrossEntropy(), Adam()).save(other)
    code, out, err = _run('sample', str(other))
    assert code == 1 and 'not a tinynn-lm one' in err, err

def test_ctrl_c_saves_the_last_completed_step(tmp_path, monkeypatch):
    _ctrl_c_keeps_the_completed_steps(tmp_path, monkeypatch, TINY, 4)

@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_saves_and_exits_130(tmp_path, sig):
    "The command in a subprocess, sent SIGINT (what Ctrl-C sends) or SIGTERM once it has evaluated twice"
    ckpt = tmp_path / 'g.npz'
    proc, out, err = _signal_after_two_evaluations(_script() + TINY + ['--iters', '100000', '--save', str(ckpt)], sig)
    assert proc.returncode == 130, err[-2000:]
    assert 'interrupted after' in err and 'Traceback' not in err, err[-2000:]
    step = load_lm(ckpt)[2]['step']
    assert step >= 10 and f'checkpoint of step {step}' in out

# --- every model of chapters 11 and 12 -------------------------------------------------------------------------
SMALL = {'bigram': [], 'mlp': ['--window', '3', '--hidden', '24'], 'rnn': ['--hidden', '24'],
         'lstm': ['--hidden', '24'], 'gru': ['--hidden', '24'], 'gpt': []}

def test_the_help_lists_every_model():
    code, out, err = _run('--help')
    assert code == 0 and '{bigram,mlp,rnn,lstm,gru,gpt}' in out, out
    assert list(cli_lm.MODELS) == ['bigram', 'mlp', 'rnn', 'lstm', 'gru', 'gpt']

@pytest.mark.parametrize('name, layers', [
    ('bigram', ['Embedding']), ('mlp', ['Embedding', 'CausalWindow', 'Linear', 'Tanh', 'Linear']),
    ('rnn', ['Embedding', 'RNN', 'Linear']), ('lstm', ['Embedding', 'LSTM', 'Linear']),
    ('gru', ['Embedding', 'GRU', 'Linear'])])
def test_every_model_trains_saves_resumes_and_samples(tmp_path, name, layers):
    ckpt = tmp_path / f'{name}.npz'
    code, out, err = _run(*TINY, '--model', name, *SMALL[name], '--iters', '6', '--save', str(ckpt))
    assert code == 0 and out.count('val_loss') == 2 and out.startswith(f'{name}: '), err
    model, vocab, lm = load_lm(ckpt)
    assert [type(l).__name__ for l in model.net.layers] == layers and lm['options']['model'] == name
    before = {k: p.copy() for k, p in model.net.params.items()}
    code, out, err = _run('--resume', str(ckpt), '--iters', '9', '--save', str(ckpt))
    assert code == 0 and 'steps 7-9' in out and out.startswith(f'{name}: '), err
    resumed = load_lm(ckpt)[0]
    assert lm['step'] == 6 and load_lm(ckpt)[2]['step'] == 9
    assert any(not np.array_equal(before[k], p) for k, p in resumed.net.params.items())  # it trained on
    code, out, err = _run('sample', str(ckpt), '--tokens', '30', '--top-k', '5', '--prompt', 'KING')
    assert code == 0 and out.startswith('KING') and len(out) == 4 + 30 + 1, (out, err)
    assert set(out[:-1]) <= set(vocab)

def test_the_mlp_is_causal_and_reads_window_characters():
    "Logits at position t change with the characters t-k+1 … t and with no other"
    args = cli_lm._train_parser().parse_args(['--model', 'mlp', '--window', '3', '--d-model', '4', '--hidden', '8'])
    net = cli_lm.MODELS['mlp'](10, args, np.random.default_rng(0))
    x = np.random.default_rng(1).integers(0, 10, (2, 9))
    base = net.forward(x)
    for s in range(9):
        changed = x.copy(); changed[:, s] = (changed[:, s] + 1) % 10
        moved = np.abs(net.forward(changed) - base).max(axis=(0, 2)) > 0
        assert moved.tolist() == [s <= t < s + 3 for t in range(9)], (s, moved)

def test_causal_window_matches_pytorch():
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(0)
    for (N, T, D), k in (((2, 7, 3), 4), ((3, 1, 2), 3), ((1, 5, 4), 1), ((2, 3, 2), 6)):
        x, g = rng.normal(size=(N, T, D)), rng.normal(size=(N, T, k * D))
        win = cli_lm.CausalWindow(k)
        y = win.forward(x); dx = win.backward(g)
        xt = torch.tensor(x, requires_grad=True)
        padded = torch.nn.functional.pad(xt, (0, 0, k - 1, 0))
        yt = torch.cat([padded[:, j:j + T] for j in range(k)], dim=2)
        (yt * torch.tensor(g)).sum().backward()
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=1e-15)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-14)
        assert y.dtype == dx.dtype == np.float64
    assert cli_lm.CausalWindow(2).forward(np.zeros((1, 3, 2), np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match=r'CausalWindow\(k=2\).backward expected input of shape \(1, 3, 4\)'):
        win = cli_lm.CausalWindow(2); win.forward(np.zeros((1, 3, 2))); win.backward(np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match='expected k to be a positive integer'): cli_lm.CausalWindow(0)

@pytest.mark.parametrize('name', ['bigram', 'mlp', 'rnn', 'lstm', 'gru'])
def test_ctrl_c_saves_the_last_completed_step_of_every_model(tmp_path, monkeypatch, name):
    _ctrl_c_keeps_the_completed_steps(tmp_path, monkeypatch, [*TINY, '--model', name, *SMALL[name]], 3)

@pytest.mark.parametrize('name', ['mlp', 'lstm'])
def test_sigterm_saves_a_recurrent_and_an_mlp_model(tmp_path, name):
    ckpt = tmp_path / 'm.npz'
    proc, out, err = _signal_after_two_evaluations(_script() + TINY + ['--model', name, *SMALL[name], '--iters', '100000', '--save', str(ckpt)], signal.SIGTERM)
    assert proc.returncode == 130 and 'interrupted after' in err and 'Traceback' not in err, err[-2000:]
    model, vocab, lm = load_lm(ckpt)
    assert lm['step'] >= 10 and lm['options']['model'] == name

# ---- Data parallel (chapter 13): --workers threads, or the ranks of mpiexec -----------------------------------
def _params(path): return load_lm(path)[0].net.params

def _close(a, b, atol=1e-5):
    "Two checkpoints' weights agree to float32 rounding (sums of shards in another order)"
    assert a.keys() == b.keys()
    for k in a: np.testing.assert_allclose(b[k], a[k], rtol=0, atol=atol, err_msg=k)

@pytest.mark.parametrize('name', list(SMALL))
def test_threads_train_what_one_process_does(tmp_path, name):
    "Every model, clipped on every step: 3 threads (shards of 1, 1 and 2 windows) reach one process's weights"
    argv = [*TINY, '--model', name, *SMALL[name], '--iters', '6', '--clip', '0.05']
    out = {}
    for n in (1, 3):
        code, out[n], err = _run(*argv, '--workers', str(n), '--save', str(tmp_path / f'{n}.npz'))
        assert code == 0, err
    assert '3 threads sharing each step' in out[3] and 'sharing' not in out[1]
    assert out[3].count('val_loss') == 2 and out[3].count('checkpoint of step 6') == 1
    _close(_params(tmp_path / '1.npz'), _params(tmp_path / '3.npz'))

def test_clipping_sees_the_gradient_summed_over_the_workers(monkeypatch):
    "One clip a step, of the whole batch's gradient: the norms are one process's, not a shard's"
    norms, real = [], cli_lm.clip_grad_norm
    def spy(grads, max_norm):
        norms.append(real(grads, max_norm)); return norms[-1]
    monkeypatch.setattr(cli_lm, 'clip_grad_norm', spy)
    seen = {}
    for n in (1, 2):
        norms.clear()
        assert _run(*TINY, '--iters', '4', '--clip', '0.05', '--workers', str(n))[0] == 0
        seen[n] = norms[:]
    assert len(seen[2]) == 4 and min(seen[1]) > 0.05   # once a step; the limit bit every time
    np.testing.assert_allclose(seen[2], seen[1], rtol=1e-5)

def test_ctrl_c_with_threads_saves_the_last_completed_step(tmp_path, monkeypatch):
    _ctrl_c_keeps_the_completed_steps(tmp_path, monkeypatch, [*TINY, '--model', 'gru', *SMALL['gru'], '--workers', '2'], 3)

def test_a_run_resumed_with_more_workers_goes_on_as_one_process_would(tmp_path):
    "--workers is not an option the checkpoint fixes: a run saved by one process resumes on two threads"
    argv = [*TINY, '--model', 'lstm', *SMALL['lstm']]
    for name in ('a', 'b'):
        assert _run(*argv, '--iters', '3', '--save', str(tmp_path / f'{name}.npz'))[0] == 0
    assert _run('--resume', str(tmp_path / 'a.npz'), '--iters', '6', '--save', str(tmp_path / 'a.npz'))[0] == 0
    code, out, err = _run('--resume', str(tmp_path / 'b.npz'), '--iters', '6', '--workers', '2',
                          '--save', str(tmp_path / 'b.npz'))
    assert code == 0 and 'steps 4-6' in out and '2 threads sharing each step' in out, err
    _close(_params(tmp_path / 'a.npz'), _params(tmp_path / 'b.npz'))

def test_workers_refused_where_they_cannot_share(monkeypatch):
    monkeypatch.setattr(cli_lm, '_read_text', lambda args: pytest.fail('read the text before refusing'))
    code, out, err = _run('--workers', '0')
    assert code == 2 and 'argument --workers: expected a positive int' in err, err
    monkeypatch.setattr(cli_lm, 'get_device', lambda name: name)   # as if there were a GPU
    code, out, err = _run('--workers', '2', '--device', 'gpu')
    assert code == 2 and 'threads share a step on the cpu only, not on the gpu' in err, err
    monkeypatch.setenv('PMI_RANK', '0'); monkeypatch.setenv('PMI_SIZE', '2')   # as mpiexec -n 2 starts a rank
    code, out, err = _run('--workers', '2')
    assert code == 2 and 'argument --workers: started by mpiexec on 2 ranks' in err, err
    code, out, err = _run('--device', 'gpu')
    assert code == 2 and 'argument --device: started by mpiexec on 2 ranks' in err, err
    def no_mpi4py(): raise ImportError("training over MPI needs mpi4py and an MPI: pip install -e \".[mpi]\"")
    monkeypatch.setattr(cli_lm, 'import_mpi', no_mpi4py)
    code, out, err = _run()
    assert code == 2 and 'started by mpiexec on 2 ranks: training over MPI needs mpi4py' in err, err

def test_a_real_sigterm_with_threads_saves_and_exits_130(tmp_path):
    ckpt = tmp_path / 'g.npz'
    proc, out, err = _signal_after_two_evaluations(_script() + TINY + ['--workers', '2', '--iters', '100000', '--save', str(ckpt)], signal.SIGTERM)
    assert proc.returncode == 130 and 'interrupted after' in err and 'Traceback' not in err, err[-2000:]
    assert load_lm(ckpt)[2]['step'] >= 10

def _mpi_ready():
    from tinynn_book.parallel import import_mpi, mpiexec_path
    try: import_mpi(); return bool(mpiexec_path())
    except Exception: return False

needs_mpi = pytest.mark.skipif(not _mpi_ready(), reason="needs mpi4py and mpiexec: pip install -e '.[mpi]'")

# each rank also writes its own weights, to show that every rank holds the same ones
EVERY_RANK = '''import sys, numpy as np
from tinynn_book import cli_lm
from tinynn_book.parallel import mpi_world
report = cli_lm._report
def each_rank(args, model, *rest):
    np.savez(f"{args.save}.rank{mpi_world()[0]}.npz", **model.net.params)
    return report(args, model, *rest)
cli_lm._report = each_rank
sys.exit(cli_lm.main())'''

def _ranks(path, n=2):
    out = []
    for r in range(n):
        with np.load(f'{path}.rank{r}.npz') as f: out.append({k: f[k] for k in f.files})
    return out

@needs_mpi
@pytest.mark.parametrize('name', list(SMALL))
def test_mpiexec_two_ranks_print_once_save_once_and_train_what_one_does(tmp_path, name):
    from tinynn_book.parallel import mpi_run
    argv = [*TINY, '--model', name, *SMALL[name], '--iters', '6', '--clip', '0.05']
    ckpt = tmp_path / 'ranks.npz'
    ranks = mpi_run([sys.executable, '-c', EVERY_RANK, *argv, '--sample-tokens', '20', '--save', ckpt],
                    n=2, timeout=300)
    assert ranks.returncode == 0, ranks.stderr[-2000:]
    out = ranks.stdout
    assert out.count(f'{name}: ') == 1 and out.count('val_loss') == 2, out
    assert '2 ranks sharing each step' in out and out.count('checkpoint of step 6') == 1, out
    zero, one = _ranks(ckpt)
    for k in zero: assert zero[k].tobytes() == one[k].tobytes(), k   # every rank, bit for bit
    assert _run(*argv, '--save', str(tmp_path / 'one.npz'))[0] == 0
    _close(_params(tmp_path / 'one.npz'), _params(ckpt))

@needs_mpi
def test_mpiexec_with_dropout_ranks_agree_but_draw_their_own_masks(tmp_path):
    "Each rank draws dropout masks for its shard from its own stream: the ranks agree, one process differs"
    from tinynn_book.parallel import mpi_run
    argv = [*TINY, '--dropout', '0.2', '--iters', '6']
    ckpt = tmp_path / 'ranks.npz'
    ranks = mpi_run([sys.executable, '-c', EVERY_RANK, *argv, '--save', ckpt], n=2, timeout=300)
    assert ranks.returncode == 0, ranks.stderr[-2000:]
    zero, one = _ranks(ckpt)
    for k in zero: assert zero[k].tobytes() == one[k].tobytes(), k
    assert _run(*argv, '--save', str(tmp_path / 'one.npz'))[0] == 0
    single, shared = _params(tmp_path / 'one.npz'), _params(ckpt)
    assert max(float(np.abs(single[k] - shared[k]).max()) for k in single) > 1e-4

@needs_mpi
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_mpiexec_passes_a_signal_on_and_every_rank_stops_after_one_step(tmp_path, sig):
    "mpiexec hands the signal to both ranks; they stop after the same step (no rank left waiting), rank 0 saves"
    from tinynn_book.parallel import mpiexec_path
    ckpt = tmp_path / 'g.npz'
    proc, out, err = _signal_after_two_evaluations([mpiexec_path(), '-n', '2', *_script(), *TINY, '--iters', '100000', '--save', str(ckpt)], sig)
    assert proc.returncode == 130 and err.count('interrupted after') == 1, err[-2000:]
    assert 'Traceback' not in err, err[-2000:]
    step = load_lm(ckpt)[2]['step']
    assert step >= 10 and out.count(f'checkpoint of step {step}') == 1, out
