"The tinynn-mnist command (tinynn_book.cli) from the outside: as the installed script, offline, on the bundled sample."
import os, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
from tinynn_book.mnist import load_mnist

def _command(*args, env=None):
    exe = shutil.which('tinynn-mnist')
    cmd = [exe] if exe else [sys.executable, '-c', 'import sys; from tinynn_book.cli import main; sys.exit(main())']
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=600)

def _offline_env(tmp_path):
    "A fresh user: no data variable, an empty home and cache"
    env = {k: v for k, v in os.environ.items() if k != 'TINYNN_BOOK_DATA'}
    env.update(HOME=str(tmp_path/'home'), XDG_CACHE_HOME=str(tmp_path/'cache'))
    env.pop('MPLBACKEND', None)  # the command must pick a non-interactive backend itself
    return env

def test_entry_point_is_the_cli_module():
    from importlib.metadata import entry_points
    scripts = {e.name: e.value for e in entry_points(group='console_scripts')}
    assert scripts.get('tinynn-mnist') == 'tinynn_book.cli:main'

def test_command_on_sample_writes_checkpoint_and_plot(tmp_path):
    ckpt, png = tmp_path/'m.npz', tmp_path/'c.png'
    r = _command('--sample', '--epochs', '1', '--save', str(ckpt), '--plot', str(png), env=_offline_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('test accuracy') == 1 and 'Dense' in r.stdout
    assert '5500 training, 500 validation and 1000 test images' in r.stdout
    assert png.read_bytes()[:4] == b'\x89PNG'
    from tinynn_book.model import Model
    _, (xt, yt) = load_mnist(sample=True)
    assert Model.load(ckpt).evaluate(xt, yt)['accuracy'] >= 0.75  # the checkpoint is the trained MLP

def test_command_bad_arguments_exit_2(tmp_path):
    for bad in (['--epochs', '0'], ['--model', 'vgg'], ['--batch-size', 'x'], ['--sample', '--data', str(tmp_path)],
                ['--dropout', '1.5'], ['--dropout', '-0.1'], ['--val-size', '-1'], ['--sample', '--val-size', '6000']):
        r = _command(*bad, env=_offline_env(tmp_path))
        assert r.returncode == 2 and 'error' in r.stderr, (bad, r.stderr)

def test_command_missing_data_exit_1(tmp_path):
    r = _command('--data', str(tmp_path), '--epochs', '1', env=_offline_env(tmp_path))
    assert r.returncode == 1 and 'MNIST not found' in r.stderr and 'TINYNN_BOOK_DATA' in r.stderr, r.stderr

def _run(*argv):
    import contextlib, io
    from tinynn_book.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out): code = main(list(argv))
    return code, out.getvalue()

def test_val_size_zero_trains_on_everything():
    code, out = _run('--sample', '--epochs', '1', '--no-progress', '--val-size', '0')
    assert code == 0 and '6000 training, 0 validation' in out and 'val_accuracy' not in out

def test_default_options_build_the_plain_recipe():
    "No --dropout, no --batchnorm: the model is make_model's, weight for weight"
    from tinynn_book import cli, mnist
    assert cli._net_options('mlp') == {} and cli._net_options('lenet', 0.0, False, 3) == {}
    p = cli._parser()
    args = p.parse_args([]); cli._check_args(p, args)
    assert (args.lr, args.weight_decay, args.shift, args.schedule, args.dropout, args.batchnorm, args.val_size) == (1e-3, mnist.WEIGHT_DECAY, 1, 'cosine', 0.0, False, None)
    a = mnist.make_model('lenet', seed=0, **cli._net_options('lenet'))
    b = mnist.make_model('lenet', seed=0)
    for k in b.net.params: np.testing.assert_array_equal(a.net.params[k], b.net.params[k])

@pytest.mark.parametrize('model, norms', [('mlp', ['BatchNorm1d'] * 2), ('lenet', ['BatchNorm2d'] * 2 + ['BatchNorm1d'] * 2)])
def test_dropout_and_batchnorm_options(model, norms):
    pytest.importorskip('tinynn_book.regularization')
    from tinynn_book import cli, mnist
    net = mnist.make_model(model, seed=0, **cli._net_options(model, 0.5, True, 0)).net
    kinds = [type(layer).__name__ for layer in net.layers]
    assert [k for k in kinds if k.startswith('BatchNorm')] == norms and kinds.count('Dropout') == 2
    plain = mnist.make_model(model, seed=0).net  # the injected layers draw no numbers from the weights' generator
    weights = lambda n: [v for k, v in n.params.items() if k.endswith(('.w', '.b'))]
    for a, b in zip(weights(net), weights(plain)): np.testing.assert_array_equal(a, b)
    code, out = _run('--sample', '--model', model, '--epochs', '1', '--no-progress', '--dropout', '0.5', '--batchnorm', '--val-size', '5000')
    assert code == 0 and 'dropout 0.5, batch norm' in out and out.count('test accuracy') == 1

# --- issue 12: arguments checked before any data is loaded, outputs that cannot be written, Ctrl-C, memory ---------

def _run_both(*argv):
    "main(argv) in this process: (exit code, stdout, stderr); a SystemExit from argparse becomes its code"
    import contextlib, io
    from tinynn_book.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main(list(argv))
        except SystemExit as e: code = e.code
        except KeyboardInterrupt: code = 'KeyboardInterrupt escaped main'  # fail this test, not the whole session
    return code, out.getvalue(), err.getvalue()

@pytest.fixture
def no_loading(monkeypatch):
    "Fail the test if the command gets as far as loading data"
    from tinynn_book import cli
    monkeypatch.setattr(cli, 'load_mnist', lambda *a, **k: pytest.fail('loaded data before refusing the arguments'))

@pytest.mark.parametrize('bad, message', [
    (['--lr', 'inf'], 'expected a finite number > 0'), (['--lr', 'nan'], 'expected a finite number > 0'),
    (['--weight-decay', 'nan'], 'expected a finite number >= 0'), (['--weight-decay', 'inf'], 'expected a finite number >= 0'),
    (['--seed', '-1'], 'expected an integer >= 0'), (['--dropout', '1'], 'a probability in [0, 1)'),
    (['--dropout', 'nan'], 'a probability in [0, 1)'), (['--save', ''], "expected a non-empty name, got ''"),
    (['--plot', ''], "expected a non-empty name, got ''"), (['--data', ''], "expected a non-empty name, got ''"),
])
def test_bad_arguments_are_refused_before_any_data_loads(no_loading, bad, message):
    "Issue 12.11: --lr inf, --weight-decay nan and --seed -1 failed only after loading (or trained on), --save '' saved nothing"
    code, out, err = _run_both('--sample', *bad) if '--data' not in bad else _run_both(*bad)
    assert code == 2 and message in err, (bad, err)

def _unwritable_dirs(tmp_path):
    "Directories this process cannot create files in: a read-only one (not for root) and /sys where it is read-only"
    import tempfile
    dirs = []
    if os.geteuid() != 0:
        ro = tmp_path/'read-only'; ro.mkdir(); ro.chmod(0o500); dirs.append(ro)
    try:
        with tempfile.TemporaryFile(dir='/sys'): pass
    except OSError: dirs.append(Path('/sys'))
    return dirs

def test_unwritable_outputs_are_refused_before_any_data_loads(tmp_path, no_loading):
    "Issue 12.11: --save into a read-only directory was found only when training was over, with a traceback"
    dirs = _unwritable_dirs(tmp_path)
    if not dirs: pytest.skip('no unwritable directory available to this process')
    for d in dirs:
        for opt, name in (('--save', 'model.npz'), ('--plot', 'curves.png')):
            code, out, err = _run_both('--sample', opt, str(d/name))
            assert code == 2 and f'argument {opt}: cannot write in {d}' in err, (d, opt, err)
    code, out, err = _run_both('--sample', '--save', str(tmp_path))
    assert code == 2 and 'is a directory' in err, err
    code, out, err = _run_both('--sample', '--plot', str(tmp_path/'missing'/'curves.png'))
    assert code == 2 and 'missing does not exist' in err, err

def test_the_write_check_leaves_nothing_behind(tmp_path):
    out_dir = tmp_path/'out'; out_dir.mkdir()
    code, out, err = _run_both('--data', str(tmp_path/'no-data'), '--save', str(out_dir/'m.npz'), '--plot', str(out_dir/'c.png'))
    assert code == 1 and 'MNIST not found' in err, err   # got past the checks, then found no data
    assert os.listdir(out_dir) == []

def test_a_final_write_that_fails_is_one_line_and_exit_1(tmp_path, monkeypatch):
    "Issue 12.11: if the write still fails after training (a full disk), say so in one line and exit non-zero"
    import errno
    from tinynn_book.model import Model
    def full_disk(self, path): raise OSError(errno.ENOSPC, 'No space left on device', str(path))
    monkeypatch.setattr(Model, 'save', full_disk)
    code, out, err = _run_both('--sample', '--epochs', '1', '--val-size', '5000', '--no-progress',
                               '--save', str(tmp_path/'m.npz'), '--plot', str(tmp_path/'c.png'))
    assert code == 1 and err.count('\n') == 1 and 'could not write the checkpoint' in err and 'No space left' in err, err
    assert (tmp_path/'c.png').read_bytes()[:4] == b'\x89PNG' and 'curves:' in out   # the other output is still written

def _interrupt_at(monkeypatch, step_number):
    "Make the `step_number`-th training step raise KeyboardInterrupt after its update, as fit delivers a Ctrl-C"
    from tinynn_book.model import Model
    real_step, steps = Model._step, []
    def step(self, x, y):
        result = real_step(self, x, y); steps.append(1)
        if len(steps) == step_number: raise KeyboardInterrupt
        return result
    monkeypatch.setattr(Model, '_step', step)

COMMON = ['--sample', '--val-size', '5000', '--schedule', 'constant', '--no-progress']  # 1000 training images: 8 steps per epoch

def test_ctrl_c_writes_the_last_completed_epoch_and_exits_130(tmp_path, monkeypatch):
    "Issue 12.12: Ctrl-C lost the trained model; now the checkpoint is the weights of the last completed epoch"
    from tinynn_book.model import Model
    assert _run_both(*COMMON, '--epochs', '1', '--save', str(tmp_path/'one.npz'))[0] == 0
    _interrupt_at(monkeypatch, 8 + 3)   # three steps into epoch 2
    code, out, err = _run_both(*COMMON, '--epochs', '3', '--save', str(tmp_path/'cut.npz'), '--plot', str(tmp_path/'cut.png'))
    assert code == 130 and err == 'tinynn-mnist: interrupted after 1 of 3 epochs\n', err
    assert f'checkpoint of epoch 1: {tmp_path/"cut.npz"}' in out and 'test accuracy' not in out
    one, cut = Model.load(tmp_path/'one.npz'), Model.load(tmp_path/'cut.npz')
    for k in one.net.params: np.testing.assert_array_equal(cut.net.params[k], one.net.params[k])   # not half of epoch 2
    assert (tmp_path/'cut.png').read_bytes()[:4] == b'\x89PNG'

def test_ctrl_c_in_the_first_epoch_or_without_save(tmp_path, monkeypatch):
    _interrupt_at(monkeypatch, 3)
    code, out, err = _run_both(*COMMON, '--epochs', '2', '--save', str(tmp_path/'m.npz'))
    assert code == 130 and 'no epoch completed, so no checkpoint' in err and not (tmp_path/'m.npz').exists(), err
    assert os.listdir(tmp_path) == []
    _interrupt_at(monkeypatch, 8 + 1)
    code, out, err = _run_both(*COMMON, '--epochs', '2')
    assert code == 130 and err == 'tinynn-mnist: interrupted after 1 of 2 epochs\n', err

def _signals_at_default():
    "preexec_fn: the child starts with SIGINT, SIGTERM and SIGHUP at their defaults, however pytest itself was started"
    import signal
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP): signal.signal(s, signal.SIG_DFL)

@pytest.mark.parametrize('name, code, says', [('SIGINT', 130, 'interrupted after'), ('SIGTERM', 143, 'stopped by SIGTERM after'),
                                              ('SIGHUP', 129, 'stopped by SIGHUP after')])
def test_a_real_signal_saves_and_exits_128_plus_its_number(tmp_path, name, code, says):
    """The installed command, sent SIGINT (Ctrl-C), SIGTERM (kill, timeout, docker stop) or SIGHUP in its second epoch or later.
    Issue 20.1: SIGTERM and SIGHUP killed it with no checkpoint; issue 20.17: started with SIGINT ignored, the child ignored it too"""
    import signal, time
    from tinynn_book.model import Model
    exe = shutil.which('tinynn-mnist')
    cmd = [exe] if exe else [sys.executable, '-c', 'import sys; from tinynn_book.cli import main; sys.exit(main())']
    env = dict(_offline_env(tmp_path), PYTHONUNBUFFERED='1')
    ckpt = tmp_path/'m.npz'
    proc = subprocess.Popen(cmd + COMMON + ['--epochs', '1000', '--save', str(ckpt)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_signals_at_default)
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:   # wait until epoch 2 has ended: epoch 1's copy is surely made
            if line.split('/')[0].split() == ['epoch', '2'] or time.monotonic() > deadline: break
        proc.send_signal(getattr(signal, name))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == code, err[-2000:]
    assert says in err and 'Traceback' not in err, err[-2000:]
    assert 'checkpoint of epoch' in out and Model.load(ckpt).net.params

def test_memory_error_in_the_command_is_one_line(tmp_path):
    "Issue 12.5: a data file asking for more memory than there is ended the command with a MemoryError traceback"
    import gzip
    d = tmp_path/'data'; d.mkdir()
    rng = np.random.default_rng(0)
    def idx(a): return bytes([0, 0, 0x08, a.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in a.shape) + a.tobytes()
    for name, a in (('train-labels-idx1-ubyte', np.zeros(10, np.uint8)), ('t10k-images-idx3-ubyte', rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)),
                    ('t10k-labels-idx1-ubyte', np.zeros(10, np.uint8))):
        (d/(name + '.gz')).write_bytes(gzip.compress(idx(a)))
    with gzip.open(d/'train-images-idx3-ubyte.gz', 'wb') as f:   # 314 MB of zeros, as its header promises
        f.write(bytes([0, 0, 0x08, 3]) + b''.join(int(n).to_bytes(4, 'big') for n in (400_000, 28, 28)))
        for _ in range(400_000 * 784 >> 20): f.write(bytes(1 << 20))
        f.write(bytes(400_000 * 784 % (1 << 20)))
    import tinynn_book
    code = f"""
import re, resource, sys
from tinynn_book.cli import main
vm = int(re.search(r'VmSize:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 150 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.exit(main(['--data', {str(d)!r}, '--epochs', '1', '--no-progress']))
"""
    env = dict(os.environ, PYTHONPATH=str(Path(tinynn_book.__file__).parent.parent), OPENBLAS_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert r.stderr.count('\n') == 1 and 'tinynn-mnist: error:' in r.stderr and 'more memory than is available' in r.stderr, r.stderr


def test_resnet_takes_its_recipe_unless_told_otherwise():
    from tinynn_book import cli
    from tinynn_book.cnn import RESNET_RECIPE
    p = cli._parser()
    args = p.parse_args(['--model', 'resnet']); cli._check_args(p, args)
    assert (args.lr, args.weight_decay, args.shift) == (RESNET_RECIPE['lr'], RESNET_RECIPE['weight_decay'], RESNET_RECIPE['max_shift'])
    args = p.parse_args(['--model', 'resnet', '--lr', '0.01', '--shift', '0']); cli._check_args(p, args)
    assert (args.lr, args.weight_decay, args.shift) == (0.01, RESNET_RECIPE['weight_decay'], 0)

def test_resnet_refuses_mlp_and_lenet_options():
    for extra in (['--dropout', '0.2'], ['--batchnorm']):
        r = _command('--model', 'resnet', '--sample', *extra)
        assert r.returncode == 2 and 'apply to mlp and lenet' in r.stderr, r.stderr

def test_command_trains_the_resnet_on_the_sample(tmp_path):
    ckpt = tmp_path/'r.npz'
    r = _command('--sample', '--model', 'resnet', '--epochs', '1', '--val-size', '5000', '--save', str(ckpt), env=_offline_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert 'Residual' in r.stdout and r.stdout.count('test accuracy') == 1
    from tinynn_book.model import Model
    assert type(Model.load(ckpt).net.layers[5]).__name__ == 'Residual'


# --- issue 20: outputs that collide, long names, batch norm's last batch, divergence, empty data ---------------------

def test_save_and_plot_naming_one_file_is_an_argument_error(tmp_path, no_loading):
    "Issue 20.4: --save same.png --plot same.png exited 0, and the plot had overwritten the checkpoint"
    (tmp_path/'d').mkdir()
    for save, plot in ((tmp_path/'same.png', tmp_path/'same.png'), (tmp_path/'d'/'..'/'x.png', tmp_path/'x.png')):
        code, out, err = _run_both('--sample', '--save', str(save), '--plot', str(plot))
        assert code == 2 and 'arguments --save and --plot: both name the file' in err, err
    (tmp_path/'real.png').write_bytes(b''); (tmp_path/'link.png').symlink_to(tmp_path/'real.png')
    code, out, err = _run_both('--sample', '--save', str(tmp_path/'link.png'), '--plot', str(tmp_path/'real.png'))
    assert code == 2 and 'both name the file' in err, err

@pytest.mark.parametrize('opt, name', [('--save', 'm' * 300 + '.npz'), ('--plot', 'c' * 300 + '.png'),
                                       ('--save', 'd' * 300 + '/m.npz')])
def test_a_300_character_output_name_is_an_argument_error(tmp_path, no_loading, opt, name):
    "Issue 20.16: a 300-character --save or --plot ended in a raw OSError (File name too long)"
    code, out, err = _run_both('--sample', opt, str(tmp_path/name))
    assert code == 2 and f'argument {opt}:' in err and 'Traceback' not in err, err
    assert len(err.strip().splitlines()[-1]) < 200, err   # one short message, not the whole name

def test_batchnorm_with_a_last_batch_of_one_trains(tmp_path):
    "Issue 20.2: --batchnorm with 1000 = 111 * 9 + 1 training images crashed after training had started, saving nothing"
    code, out, err = _run_both('--sample', '--val-size', '5000', '--no-progress', '--batchnorm', '--batch-size', '9',
                               '--epochs', '1', '--save', str(tmp_path/'m.npz'))
    assert code == 0 and 'test accuracy' in out and (tmp_path/'m.npz').exists(), err[-2000:]

def test_batchnorm_combinations_that_cannot_train_are_refused_before_training(no_loading):
    code, out, err = _run_both('--sample', '--batchnorm', '--batch-size', '1')
    assert code == 2 and 'argument --batch-size: --batchnorm needs at least 2 examples per batch' in err, err

def test_a_batch_larger_than_the_training_set_with_batchnorm_is_refused(monkeypatch):
    from tinynn_book.model import Model
    monkeypatch.setattr(Model, 'fit', lambda *a, **k: pytest.fail('started training'))
    code, out, err = _run_both('--sample', '--batchnorm', '--val-size', '5990', '--no-progress')
    assert code == 2 and 'argument --batch-size: 128 is more than the 10 training images' in err, err

def test_a_diverging_run_is_one_line_and_keeps_the_last_epoch(tmp_path, monkeypatch):
    "Issue 20.5: --lr 1e30 ended in a FloatingPointError traceback and wrote nothing"
    r = _command(*COMMON, '--lr', '1e30', '--epochs', '3', '--save', str(tmp_path/'m.npz'), env=_offline_env(tmp_path))
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and 'training diverged' in r.stderr, r.stderr   # no numpy warnings either
    assert 'no epoch completed' in r.stderr and not (tmp_path/'m.npz').exists()
    from tinynn_book.model import Model
    assert _run_both(*COMMON, '--epochs', '1', '--save', str(tmp_path/'one.npz'))[0] == 0
    real_step, steps = Model._step, []
    def step(self, x, y):   # the loss turns NaN three steps into epoch 2
        steps.append(1)
        if len(steps) == 8 + 3: raise FloatingPointError('the loss is nan')
        return real_step(self, x, y)
    monkeypatch.setattr(Model, '_step', step)
    code, out, err = _run_both(*COMMON, '--epochs', '3', '--save', str(tmp_path/'cut.npz'))
    assert code == 1 and err.count('\n') == 1 and err.startswith('tinynn-mnist: error: training diverged after 1 of 3 epochs: '), err
    assert 'epoch 2/3, step 3/8' in err and f'checkpoint of epoch 1: {tmp_path/"cut.npz"}' in out
    one, cut = Model.load(tmp_path/'one.npz'), Model.load(tmp_path/'cut.npz')
    for k in one.net.params: np.testing.assert_array_equal(cut.net.params[k], one.net.params[k])

def test_no_training_images_does_not_blame_val_size(tmp_path):
    "Issue 20.16 and 20.3: 0 training images said 'argument --val-size: 0 leaves no training images' without any --val-size"
    import gzip
    d = tmp_path/'data'; d.mkdir()
    def idx(a): return bytes([0, 0, 0x08, a.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in a.shape) + a.tobytes()
    for name, a in (('train-images-idx3-ubyte', np.zeros((0, 28, 28), np.uint8)), ('train-labels-idx1-ubyte', np.zeros(0, np.uint8)),
                    ('t10k-images-idx3-ubyte', np.zeros((5, 28, 28), np.uint8)), ('t10k-labels-idx1-ubyte', np.zeros(5, np.uint8))):
        (d/(name + '.gz')).write_bytes(gzip.compress(idx(a)))
    code, out, err = _run_both('--data', str(d), '--epochs', '1', '--no-progress')
    assert code == 1 and 'train-images-idx3-ubyte.gz: holds no images' in err and '--val-size' not in err, err


# ---- Data parallel (chapter 13): --workers threads, or the ranks of mpiexec ------------------------------------------
def _weights(path):
    with np.load(path) as f: return {k: f[k] for k in f.files if f[k].dtype.kind == 'f'}

def _same_run_args(ckpt):
    "One epoch of the MLP on the sample without random shifts: every worker draws the same steps"
    return ['--sample', '--epochs', '1', '--shift', '0', '--no-progress', '--save', str(ckpt)]

def test_two_threads_train_what_one_does(tmp_path):
    one, two = (_command(*_same_run_args(tmp_path/f'{n}.npz'), '--workers', str(n), env=_offline_env(tmp_path))
                for n in (1, 2))
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert '2 threads sharing each step' in two.stdout and 'sharing' not in one.stdout
    w1, w2 = _weights(tmp_path/'1.npz'), _weights(tmp_path/'2.npz')
    assert w1.keys() == w2.keys()
    for k in w1: np.testing.assert_allclose(w2[k], w1[k], rtol=0, atol=1e-4, err_msg=k)   # float32 sums in another order
    accuracy = lambda out: out.split('test accuracy: ')[1].split('%')[0]
    assert accuracy(two.stdout) == accuracy(one.stdout)

def test_workers_refused_where_they_cannot_share(tmp_path):
    env = dict(_offline_env(tmp_path), PMI_RANK='0', PMI_SIZE='2')   # as mpiexec -n 2 starts a rank
    r = _command('--sample', '--workers', '2', env=env)
    assert r.returncode == 2 and 'mpiexec on 2 ranks' in r.stderr, r.stderr
    r = _command('--sample', '--workers', '0', env=_offline_env(tmp_path))
    assert r.returncode == 2 and '--workers' in r.stderr
    r = _command('--sample', '--device', 'gpu', env=env)   # before CuPy is looked for: the same error anywhere
    assert r.returncode == 2 and 'argument --device: started by mpiexec on 2 ranks' in r.stderr, r.stderr

def _mpi_ready():
    from tinynn_book.parallel import import_mpi, mpiexec_path
    try: import_mpi(); return bool(mpiexec_path())
    except Exception: return False

@pytest.mark.skipif(not _mpi_ready(), reason="needs mpi4py and mpiexec: pip install -e '.[mpi]'")
def test_mpiexec_two_ranks_print_once_save_once_and_train_what_one_does(tmp_path):
    from tinynn_book.parallel import mpi_run
    exe = shutil.which('tinynn-mnist')
    cmd = [exe] if exe else [sys.executable, '-c', 'import sys; from tinynn_book.cli import main; sys.exit(main())']
    ranks = mpi_run(cmd + _same_run_args(tmp_path/'ranks.npz'), n=2)
    assert ranks.returncode == 0, ranks.stderr[-2000:]
    assert ranks.stdout.count('test accuracy') == 1 and ranks.stdout.count('total params') == 1, ranks.stdout
    assert '2 ranks sharing each step' in ranks.stdout and ranks.stdout.count('checkpoint:') == 1
    one = _command(*_same_run_args(tmp_path/'one.npz'), env=_offline_env(tmp_path))
    w1, w2 = _weights(tmp_path/'one.npz'), _weights(tmp_path/'ranks.npz')
    for k in w1: np.testing.assert_allclose(w2[k], w1[k], rtol=0, atol=1e-4, err_msg=k)

def _rank_pid(marker, rank):
    "The pid of the process of `rank` whose command line contains `marker` (read from /proc), or None"
    for d in Path('/proc').iterdir():
        try:
            if marker in (d / 'cmdline').read_bytes().decode(errors='replace') and \
               f'PMI_RANK={rank}'.encode() in (d / 'environ').read_bytes().split(b'\0'): return int(d.name)
        except (OSError, ValueError): continue
    return None

@pytest.mark.skipif(not _mpi_ready() or not Path('/proc/self/environ').exists(), reason="needs mpi4py, mpiexec and /proc")
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    "Ctrl-C reaching rank 0 alone (a kill, or a signal between epochs) must not leave rank 1 waiting in an all-reduce"
    from tinynn_book.parallel import mpiexec_path
    ckpt = tmp_path / 'stop.npz'
    code = ('import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); '
            'from tinynn_book.cli import main; sys.exit(main())')
    proc = subprocess.Popen([mpiexec_path(), '-n', '2', sys.executable, '-c', code, '--sample', '--epochs', '1000',
                             '--shift', '0', '--no-progress', '--save', str(ckpt)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(_offline_env(tmp_path), PYTHONUNBUFFERED='1'))
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if line.startswith('epoch') and ' 2/' in line or time.monotonic() > deadline: break
        pid = _rank_pid(str(ckpt), 0)
        assert pid is not None, 'rank 0 not found'
        os.kill(pid, signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == 130 and err.count('interrupted') == 1, err[-2000:]
    assert 'Traceback' not in err and ckpt.exists(), err[-2000:]
