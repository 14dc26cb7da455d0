"The installed tinynn_book.model from the outside: training, history, summary, checkpoints and their failure modes."
import json, math
import numpy as np
import pytest
from tinynn_book.layers import Dense, Layer, ReLU, Tanh
from tinynn_book.losses import MSE, SoftmaxCrossEntropy
from tinynn_book.model import CHECKPOINT_VERSION, Callback, History, Model, Net, accuracy, describe, make_spirals
from tinynn_book.optim import SGD, Adam


def spiral_model(seed=0, lr=0.01):
    net = Net([Dense(2, 32, rng=seed), ReLU(), Dense(32, 32, rng=seed + 1), ReLU(), Dense(32, 3, rng=seed + 2)])
    return Model(net, SoftmaxCrossEntropy(), Adam(lr))


@pytest.fixture(scope='module')
def data():
    return make_spirals(100, rng=0), make_spirals(100, rng=1)


@pytest.fixture(scope='module')
def trained(data):
    (x, y), (x_val, y_val) = data
    model = spiral_model()
    history = model.fit(x, y, epochs=30, batch_size=32, validation_data=(x_val, y_val), progress=False, verbose=False)
    return model, history


def test_fit_reaches_stated_accuracy(trained, data):
    "2-32-32-3 ReLU, Adam 0.01, 30 epochs of 300 spiral points: at least 90 % on a fresh draw"
    model, history = trained
    (x_val, y_val) = data[1]
    result = model.evaluate(x_val, y_val)
    assert result['accuracy'] >= 0.90, result
    assert history['val_accuracy'][-1] == result['accuracy']
    assert history['loss'][-1] < 0.5 * history['loss'][0]


def test_history_keys_and_lengths(trained):
    model, history = trained
    assert isinstance(history, History) and isinstance(history, dict)
    assert list(history) == ['loss', 'accuracy', 'val_loss', 'val_accuracy', 'lr', 'seconds']
    assert history.epochs == 30 and all(len(v) == 30 for v in history.values())
    assert all(isinstance(v, float) and math.isfinite(v) for k in ('loss', 'accuracy', 'val_loss', 'val_accuracy') for v in history[k])
    assert all(s > 0 for s in history['seconds'])


def test_history_without_validation_or_accuracy():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(64, 1)).astype(np.float32)
    model = Model(Net([Dense(1, 8, rng=0), Tanh(), Dense(8, 1, rng=1)]), MSE(), Adam(0.01))
    history = model.fit(x, np.sin(3 * x), epochs=3, batch_size=16, progress=False, verbose=False)
    assert history['accuracy'] == [None] * 3 and history['val_loss'] == [None] * 3
    assert model.evaluate(x, np.sin(3 * x))['accuracy'] is None


def test_float32_throughout(trained, data):
    model, _ = trained
    x_val = data[1][0]
    assert all(p.dtype == np.float32 and g.dtype == np.float32 for p, g in model.net.parameters())
    assert model.predict(x_val.astype(np.float64)).dtype == np.float32


def test_predict_in_batches_matches_one_pass(trained, data):
    model, _ = trained
    x_val = data[1][0]
    np.testing.assert_allclose(model.predict(x_val, batch_size=7), model.net.forward(x_val), rtol=1e-5, atol=1e-5)  # float32: summation order differs by batch
    assert accuracy(model.predict(x_val), data[1][1]) == model.evaluate(*data[1])['accuracy']


def test_save_load_identical_predictions(trained, data, tmp_path):
    model, _ = trained
    x_val = data[1][0]
    path = model.save(tmp_path / 'spirals.npz')
    loaded = Model.load(path)
    assert np.array_equal(loaded.predict(x_val), model.predict(x_val))
    assert repr(loaded.net) == repr(model.net)
    assert type(loaded.loss) is SoftmaxCrossEntropy and loaded.optimizer.config() == model.optimizer.config()
    assert [p.name for p in tmp_path.iterdir()] == ['spirals.npz']  # no temporary file left


def test_load_finds_layers_defined_outside_the_library(tmp_path, data):
    class Shift(Layer):
        def __init__(self, num_features):
            super().__init__()
            self.num_features = num_features
            self.params, self.grads = {'s': np.zeros(num_features, np.float32)}, {'s': np.zeros(num_features, np.float32)}
        def config(self): return dict(num_features=self.num_features)
        def forward(self, x): return x + self.params['s']
        def backward(self, grad):
            self.grads['s'] = grad.sum(0)
            return grad

    (x, y), (x_val, _) = data
    model = Model(Net([Dense(2, 8, rng=0), Net([Shift(8), ReLU()]), Dense(8, 3, rng=1)]), SoftmaxCrossEntropy(), SGD(0.1, momentum=0.9))
    model.fit(x, y, epochs=2, batch_size=50, progress=False, verbose=False)
    loaded = Model.load(model.save(tmp_path / 'custom.npz'))
    assert type(loaded.net[1][0]) is Shift
    assert np.array_equal(loaded.predict(x_val), model.predict(x_val))


@pytest.fixture
def checkpoint(tmp_path):
    return spiral_model().save(tmp_path / 'model.npz')


@pytest.mark.parametrize('keep', [0, 5, 0.5, -1])
def test_truncated_checkpoint(checkpoint, keep):
    data = checkpoint.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    checkpoint.write_bytes(data[:n])
    with pytest.raises(ValueError, match='model.npz is not a readable tinynn-book checkpoint'):
        Model.load(checkpoint)


def test_corrupt_checkpoint(checkpoint):
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(ValueError, match='model.npz.*CRC'):
        Model.load(checkpoint)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / 'junk.npz'
    path.write_text('hello, I am not a zip archive')
    with pytest.raises(ValueError, match='junk.npz'):
        Model.load(path)
    np.savez(path, w=np.ones(3))
    with pytest.raises(ValueError, match="no '__model__' entry"):
        Model.load(path)
    with pytest.raises(FileNotFoundError):
        Model.load(tmp_path / 'missing.npz')


def rewrite(path, change):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(path, **arrays)


@pytest.mark.parametrize('change, message', [
    (lambda a: a.update({'2.w': np.zeros((32, 31), np.float32)}), r"'2.w' is float32 \(32, 31\), the architecture needs float32 \(32, 32\)"),
    (lambda a: a.update({'4.b': a['4.b'].astype(np.float64)}), r"'4.b' is float64 \(3,\), the architecture needs float32 \(3,\)"),
    (lambda a: a.pop('0.w'), r"missing '0.w'"),
    (lambda a: a.update({'9.w': np.zeros(2, np.float32)}), r"unexpected '9.w'"),
])
def test_checkpoint_arrays_must_match_architecture(checkpoint, change, message):
    rewrite(checkpoint, change)
    with pytest.raises(ValueError, match=message):
        Model.load(checkpoint)


def test_checkpoint_never_imports_or_pickles(checkpoint):
    meta = {'format': 'tinynn-book checkpoint', 'version': 1,
            'net': {'class': 'Popen', 'module': 'subprocess', 'config': {'args': ['echo', 'pwned']}},
            'loss': {'class': 'SoftmaxCrossEntropy', 'config': {}}, 'optimizer': {'class': 'Adam', 'config': {}}}
    rewrite(checkpoint, lambda a: a.update({'__model__': np.frombuffer(json.dumps(meta).encode(), np.uint8)}))
    with pytest.raises(ValueError, match="unknown Layer class 'Popen'"):
        Model.load(checkpoint)
    rewrite(checkpoint, lambda a: a.update({'__model__': np.array([object()], dtype=object)}))
    with pytest.raises(ValueError, match='allow_pickle'):
        Model.load(checkpoint)


def test_nan_loss_names_epoch_and_step(data):
    (x, y), _ = data
    x = x.copy()
    x[70] = np.nan  # third batch of 32 when not shuffled
    model = spiral_model()
    with pytest.raises(FloatingPointError, match=r'epoch 1/3, step 3/10'):
        model.fit(x, y, epochs=3, batch_size=32, shuffle=False, progress=False, verbose=False)
    assert all(np.all(np.isfinite(p)) for p, _ in model.net.parameters())


def test_length_mismatch_names_both_shapes(data):
    (x, y), _ = data
    model = spiral_model()
    with pytest.raises(ValueError, match=r'x of shape \(300, 2\) and y of shape \(299,\)'):
        model.fit(x, y[:-1], epochs=1, progress=False, verbose=False)
    with pytest.raises(ValueError, match=r'x of shape \(300, 2\) and y of shape \(10,\)'):
        model.evaluate(x, y[:10])


def test_summary_totals():
    model = Model(Net([Dense(784, 400), ReLU(), Dense(400, 100), ReLU(), Dense(100, 10)]), SoftmaxCrossEntropy(), Adam())
    summary = model.summary(784)
    assert summary.total_params == summary.trainable_params == 784 * 400 + 400 + 400 * 100 + 100 + 100 * 10 + 10 == 355_110
    assert [row[2] for row in summary.rows] == [0, 314_000, 0, 40_100, 0, 1_010]
    assert summary.rows[-1][1] == ('N', 10)
    assert abs(summary.size_mb - 355_110 * 4 / 1e6) < 1e-12
    assert 'total params: 355,110' in str(summary)


def test_progress_bar_changes_nothing(data, capsys):
    (x, y), _ = data
    a, b = spiral_model(), spiral_model()
    a.fit(x, y, epochs=2, batch_size=32, progress=True, verbose=True)
    out, err = capsys.readouterr()
    assert 'epoch 1/2' in err and 'epoch 2/2  loss' in out
    b.fit(x, y, epochs=2, batch_size=32, progress=False, verbose=False)
    assert capsys.readouterr() == ('', '')
    assert np.array_equal(a.predict(x), b.predict(x))


class Counter(Layer):
    "Identity with one state array: the number of examples seen while training"
    state_names = ('seen',)
    def __init__(self):
        super().__init__()
        self.seen = np.zeros(1, np.int64)
    def forward(self, x):
        if self.training: self.seen += len(x)
        return x
    def backward(self, grad): return grad


def test_net_state_collects_state_names_recursively():
    net = Net([Dense(2, 4, rng=0), Counter(), Net([Counter(), Dense(4, 3, rng=1)])])
    assert list(net.state) == ['1.seen', '2.0.seen']
    assert net.state['2.0.seen'] is net[2][0].seen
    assert 'seen' not in ' '.join(net.params)  # state is not a parameter
    assert Net([Dense(2, 3)]).state == {}


def test_state_survives_save_and_load(data, tmp_path):
    (x, y), (x_val, _) = data
    model = Model(Net([Dense(2, 8, rng=0), Counter(), ReLU(), Dense(8, 3, rng=1)]), SoftmaxCrossEntropy(), Adam(0.01))
    model.fit(x, y, epochs=2, batch_size=64, progress=False, verbose=False)
    assert model.net.state['1.seen'][0] == 600
    path = model.save(tmp_path / 'counted.npz')
    with np.load(path) as z:
        assert 'state.1.seen' in z.files and json.loads(z['__model__'].tobytes())['version'] == CHECKPOINT_VERSION == 2
    loaded = Model.load(path)
    assert loaded.net.state['1.seen'][0] == 600 and loaded.net[1].seen is loaded.net.state['1.seen']
    assert np.array_equal(loaded.predict(x_val), model.predict(x_val))
    rewrite(path, lambda a: a.update({'state.1.seen': np.zeros(2, np.int64)}))
    with pytest.raises(ValueError, match=r"'state.1.seen' is int64 \(2,\), the architecture needs int64 \(1,\)"):
        Model.load(path)


def test_version_1_checkpoint_still_loads(trained, data, tmp_path):
    model, _ = trained
    meta = dict(format='tinynn-book checkpoint', version=1, net=describe(model.net), loss=describe(model.loss), optimizer=describe(model.optimizer))
    path = tmp_path / 'v1.npz'
    np.savez(path, **model.net.params, __model__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    assert np.array_equal(Model.load(path).predict(data[1][0]), model.predict(data[1][0]))


class Recorder(Callback):
    def __init__(self, stop_after=None): self.stop_after, self.calls = stop_after, []
    def on_train_begin(self, model): self.calls.append('begin')
    def on_epoch_end(self, model, history):
        self.calls.append((history.epochs, history['val_loss'][-1] is not None))
        return self.stop_after is not None and history.epochs >= self.stop_after
    def on_train_end(self, model, history): self.calls.append('end')


def test_callback_stops_training(data, capsys):
    (x, y), val = data
    stop, watch = Recorder(stop_after=2), Recorder()
    history = spiral_model().fit(x, y, epochs=10, batch_size=32, validation_data=val, callbacks=[stop, watch], progress=False)
    assert history.epochs == 2 and history.stopped_epoch == 2
    assert stop.calls == watch.calls == ['begin', (1, True), (2, True), 'end']
    assert 'stopped early after epoch 2 by Recorder' in capsys.readouterr().out


def test_callbacks_without_stop_and_bad_callbacks(data):
    (x, y), _ = data
    watch = Recorder()
    history = spiral_model().fit(x, y, epochs=3, batch_size=64, callbacks=watch, progress=False, verbose=False)
    assert history.stopped_epoch is None and watch.calls == ['begin', (1, False), (2, False), (3, False), 'end']
    with pytest.raises(TypeError, match='expected Callback objects'):
        spiral_model().fit(x, y, epochs=1, callbacks=[lambda m, h: True], progress=False, verbose=False)


# ---- issue 12: hostile and careless input (items 1, 2, 3, 6, 8, 9) ----
import subprocess, sys, threading, zipfile
from pathlib import Path


@pytest.mark.parametrize('call, message', [
    (lambda m, x, y: m.predict(x, batch_size=-1), r'Model.predict expected a positive integer batch_size, got -1'),
    (lambda m, x, y: m.predict(x, batch_size=0), r'Model.predict expected a positive integer batch_size, got 0'),
    (lambda m, x, y: m.evaluate(x, y, batch_size=-1), r'Model.evaluate expected a positive integer batch_size, got -1'),
    (lambda m, x, y: m.evaluate(x, y, batch_size=2.5), r'Model.evaluate expected a positive integer batch_size, got 2.5'),
    (lambda m, x, y: m.fit(x, y, epochs=1, batch_size=True), r'Model.fit expected a positive integer batch_size, got True'),
    (lambda m, x, y: m.fit(x, y, epochs=-1), r'Model.fit expected a non-negative integer epochs, got -1'),
    (lambda m, x, y: m.fit(x, y, epochs=1.5), r'Model.fit expected a non-negative integer epochs, got 1.5'),
    (lambda m, x, y: m.fit(x, y, epochs=1, seed=-1), r'Model.fit expected a non-negative integer seed, got -1'),
    (lambda m, x, y: m.fit(x, y, epochs=1, seed='a'), r"Model.fit expected a non-negative integer seed, got 'a'"),
], ids=['predict-1', 'predict0', 'evaluate-1', 'evaluate2.5', 'fitTrue', 'epochs-1', 'epochs1.5', 'seed-1', 'seed-a'])
def test_size_arguments_are_validated(data, call, message):
    "Issue 12.6: predict(batch_size=-1) returned None, evaluate(batch_size=-1) zeros, batch_size=0 numpy's range() error"
    (x, y), _ = data
    with pytest.raises(ValueError, match=message):
        call(spiral_model(), x, y)


def test_fit_zero_epochs_is_allowed(data):
    (x, y), _ = data
    assert spiral_model().fit(x, y, epochs=0, progress=False, verbose=False).epochs == 0


def test_saves_from_threads_never_race(tmp_path, data):
    "Issue 12.3: the temporary name was the same for every thread of a process"
    path, errors = tmp_path / 'shared.npz', []
    models = [spiral_model(seed=s) for s in range(4)]
    def work(model):
        try:
            for _ in range(15): model.save(path)
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    for t in threads: t.start()
    for t in threads: t.join()
    assert errors == []
    loaded = Model.load(path)
    assert any(np.array_equal(loaded.predict(data[1][0]), m.predict(data[1][0])) for m in models)
    assert [p.name for p in tmp_path.iterdir()] == ['shared.npz']


def test_long_file_name_saves_and_failed_cleanup_keeps_first_error(tmp_path, monkeypatch):
    "Issue 12.3: a 254-byte name must save; a cleanup that fails must not hide the write's error"
    path = tmp_path / ('m' * 250 + '.npz')
    assert Model.load(spiral_model().save(path)) is not None
    def full_disk(*args, **kwargs): raise OSError('No space left on device (simulated)')
    def unlink_fails(self, missing_ok=False): raise PermissionError('cannot unlink (simulated)')
    monkeypatch.setattr(np.lib.format, 'write_array', full_disk)
    import pathlib
    monkeypatch.setattr(pathlib.Path, 'unlink', unlink_fails)
    with pytest.raises(OSError, match='No space left'):
        spiral_model().save(tmp_path / 'other.npz')


def _peak_rss_mb(code):
    "Peak resident memory (MB) of a fresh Python process running `code` (Linux: ru_maxrss is in kB)"
    # ru_maxrss alone would not do: Linux carries the parent's (pytest's) peak over into a child it forks, so reset the
    # kernel's high-water mark first (clear_refs 5) and read VmHWM; fall back to ru_maxrss where that is not allowed
    script = ("def _reset_peak():\n    try:\n        with open('/proc/self/clear_refs', 'w') as f: f.write('5')\n        return True\n"
              "    except OSError: return False\n_exact = _reset_peak()\n" + code +
              "\nimport resource\ndef _peak():\n    if _exact:\n        for l in open('/proc/self/status'):\n"
              "            if l.startswith('VmHWM:'): return int(l.split()[1]) / 1024\n"
              "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\nprint('PEAK', _peak())")
    import os, tinynn_book
    env = dict(os.environ, PYTHONPATH=str(Path(tinynn_book.__file__).parent.parent))  # the package under test, not another install
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, float(out.stdout.split('PEAK')[-1])


def test_zip_bomb_members_are_not_decompressed(checkpoint):
    "Issue 12.2: every member was decompressed before the names were checked"
    with zipfile.ZipFile(checkpoint, 'a', compression=zipfile.ZIP_DEFLATED) as z:
        with z.open('bomb.npy', 'w', force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {'descr': '<f8', 'fortran_order': False, 'shape': (50_000_000,)})
            zeros = bytes(8_000_000)
            for _ in range(50): f.write(zeros)  # 400 MB of zeros, a few hundred kB compressed
    assert checkpoint.stat().st_size < 5_000_000
    out, peak = _peak_rss_mb(f"""
from tinynn_book.model import Model
try: Model.load({str(checkpoint)!r})
except ValueError as e: print('ERROR', e)
""")
    assert "unexpected 'bomb'" in out, out
    assert peak < 300, f'{peak:.0f} MB'


def test_description_of_huge_layers_is_refused_cheaply(checkpoint):
    "Issue 12.1: the layers a file describes were all built before any array was checked"
    meta = {'format': 'tinynn-book checkpoint', 'version': 2,
            'net': {'class': 'Net', 'module': 'tinynn_book.model', 'config': {'layers': [
                {'class': 'Dense', 'module': 'tinynn_book.layers', 'config': {'num_in': 2, 'num_out': 32}}] +
                [{'class': 'Dense', 'module': 'tinynn_book.layers', 'config': {'num_in': 3000, 'num_out': 3000}}] * 40}},
            'loss': {'class': 'SoftmaxCrossEntropy', 'config': {}}, 'optimizer': {'class': 'Adam', 'config': {}}}
    rewrite(checkpoint, lambda a: a.update({'__model__': np.frombuffer(json.dumps(meta).encode(), np.uint8)}))
    out, peak = _peak_rss_mb(f"""
from tinynn_book.model import Model
try: Model.load({str(checkpoint)!r})
except ValueError as e: print('ERROR', e)
""")
    assert 'ERROR' in out and 'model.npz' in out, out
    assert peak < 600, f'{peak:.0f} MB'  # 40 such layers would take about 4 GB


@pytest.mark.parametrize('make_bad, message', [
    (lambda z: z.writestr('notes.txt', b'hello'), 'notes.txt'),                       # was AttributeError
    (lambda z: z.writestr('__model__.npy', b'\x93NUMPY garbage'), 'model.npz'),       # a broken header
], ids=['not-npy', 'broken-header'])
def test_odd_members_are_value_errors(tmp_path, make_bad, message):
    "Issue 12.9: a member that is not an .npy array raised AttributeError"
    path = tmp_path / 'model.npz'
    with zipfile.ZipFile(path, 'w') as z: make_bad(z)
    with pytest.raises(ValueError, match=message):
        Model.load(path)


@pytest.mark.parametrize('meta_bytes', [
    b'[' * 100_000 + b']' * 100_000,                                                    # RecursionError
    json.dumps({'format': 'tinynn-book checkpoint', 'version': 2,
                'net': {'class': 'Net', 'config': {'layers': [{'class': 'Dense', 'config': {'num_in': 0, 'num_out': 3}}]}},
                'loss': {'class': 'MSE', 'config': {}}, 'optimizer': {'class': 'SGD', 'config': {'lr': 0.1}}}).encode(),  # ZeroDivisionError
    json.dumps({'format': 'tinynn-book checkpoint', 'version': 2,
                'net': {'class': 'Net', 'config': {'layers': [{'class': 'Dense', 'config': {'num_in': -5, 'num_out': 3}}]}},
                'loss': {'class': 'MSE', 'config': {}}, 'optimizer': {'class': 'SGD', 'config': {'lr': 0.1}}}).encode(),  # negative size
    json.dumps({'format': 'tinynn-book checkpoint', 'version': 2,
                'net': {'class': 'Net', 'config': {'layers': [{'class': 'Dense', 'config': {'num_in': 10**30, 'num_out': 3}}]}},
                'loss': {'class': 'MSE', 'config': {}}, 'optimizer': {'class': 'SGD', 'config': {'lr': 0.1}}}).encode(),  # OverflowError
], ids=['deep-json', 'size0', 'size-5', 'size1e30'])
def test_bad_descriptions_are_value_errors(checkpoint, meta_bytes):
    "Issue 12.9: RecursionError, ZeroDivisionError, OverflowError escaped Model.load"
    rewrite(checkpoint, lambda a: a.update({'__model__': np.frombuffer(meta_bytes, np.uint8)}))
    with pytest.raises(ValueError, match='model.npz'):
        Model.load(checkpoint)


def test_mixed_dtype_net_round_trips(tmp_path, data):
    "Issue 12.8: a net mixing float64 and float32 layers saved but could not be loaded"
    x_val = data[1][0]
    net = Net([Dense(2, 8, rng=0, dtype=np.float64), ReLU(), Dense(8, 3, rng=1)])
    model = Model(net, SoftmaxCrossEntropy(), Adam(0.01))
    assert {p.dtype for p in model.net.params.values()} == {np.dtype(np.float64), np.dtype(np.float32)}
    loaded = Model.load(model.save(tmp_path / 'mixed.npz'))
    assert [p.dtype for p in loaded.net.params.values()] == [p.dtype for p in model.net.params.values()]
    assert np.array_equal(loaded.predict(x_val), model.predict(x_val))


# ---- issue 12: learning rate and NaN guard (7), Ctrl-C (12), reshuffling (14), internal classes (10), planned sizes (1) ----
import signal
from tinynn_book.optim import SGD


def test_schedule_returning_nan_is_refused_at_its_step(data):
    "Issue 12.7: a schedule returning NaN left every weight NaN (fit returned normally when it was the last step)"
    (x, y), _ = data
    model, reference = spiral_model(), spiral_model()
    schedule = lambda step: float('nan') if step == 17 else 0.01
    with pytest.raises(ValueError, match=r'epoch 2/2, step 8/10: lr_schedule\(17\) returned nan, but a learning rate must be a finite number >= 0'):
        model.fit(x, y, epochs=2, batch_size=32, lr_schedule=schedule, progress=False, verbose=False)
    assert all(np.all(np.isfinite(p)) for p in model.net.params.values())
    # the parameters are those after the 17 good steps: compare with a run stopped by a callback-free schedule error at the same point
    class Stop(Exception): pass
    def stop_at_17(step):
        if step == 17: raise Stop
        return 0.01
    with pytest.raises(Stop):
        reference.fit(x, y, epochs=2, batch_size=32, lr_schedule=stop_at_17, progress=False, verbose=False)
    assert all(np.array_equal(model.net.params[k], reference.net.params[k]) for k in model.net.params)


def test_schedule_nan_on_the_last_step_does_not_return_normally(data):
    (x, y), _ = data
    model = spiral_model()
    with pytest.raises(ValueError, match=r'lr_schedule\(19\) returned nan'):
        model.fit(x, y, epochs=2, batch_size=32, lr_schedule=lambda step: float('nan') if step == 19 else 0.01, progress=False, verbose=False)
    assert all(np.all(np.isfinite(p)) for p in model.net.params.values())


@pytest.mark.parametrize('lr', [-0.01, float('inf'), '0.01', None, True, np.float32('nan')], ids=['negative', 'inf', 'str', 'None', 'bool', 'np-nan'])
def test_bad_learning_rates_are_refused(data, lr):
    (x, y), _ = data
    with pytest.raises(ValueError, match=r'lr_schedule\(0\) returned .*a learning rate must be a finite number >= 0'):
        spiral_model().fit(x, y, epochs=1, lr_schedule=lambda step: lr, progress=False, verbose=False)
    model = spiral_model()
    model.optimizer.lr = lr
    with pytest.raises(ValueError, match=r'optimizer.lr is'):
        model.fit(x, y, epochs=1, progress=False, verbose=False)


class Overflow(SGD):
    "SGD whose update number `at` writes inf into the first weight array, as an overflowing gradient would"
    def __init__(self, at): super().__init__(0.01); self.at, self.steps = at, 0
    def step(self, params):
        params = list(params); super().step(params); self.steps += 1
        if self.steps == self.at: params[0][0][...] = np.inf


def test_nonfinite_parameters_from_the_last_update_are_caught(data):
    "Issue 12.7: the guard only looked at the loss, so an update that broke the weights on an epoch's last step went unnoticed"
    (x, y), _ = data
    model = Model(spiral_model().net, SoftmaxCrossEntropy(), Overflow(at=10))   # 300 examples, batch 32: step 10 ends epoch 1
    with pytest.raises(FloatingPointError, match=r'stopped after epoch 1/3: an update made 0.w NaN or inf, although every loss was finite'):
        model.fit(x, y, epochs=3, batch_size=32, progress=False, verbose=False)
    model = Model(spiral_model().net, SoftmaxCrossEntropy(), Overflow(at=30))   # the very last update of the run
    with pytest.raises(FloatingPointError, match=r'after epoch 3/3'):
        model.fit(x, y, epochs=3, batch_size=32, progress=False, verbose=False)
    assert model.history.epochs == 2


def test_nan_loss_message_does_not_claim_broken_parameters_were_kept(data):
    "Issue 12.7: the message said the parameters were kept when an earlier update had already made them NaN"
    (x, y), _ = data
    model = Model(spiral_model().net, SoftmaxCrossEntropy(), Overflow(at=3))
    with np.errstate(invalid='ignore', over='ignore'), pytest.raises(FloatingPointError) as info:
        model.fit(x, y, epochs=2, batch_size=32, progress=False, verbose=False)
    message = str(info.value)
    assert 'step 4/10' in message and 'parameters 0.w were already NaN or inf before this step' in message, message
    assert 'keep their values' not in message


class CtrlC(SGD):
    "SGD that receives a real Ctrl-C (SIGINT) right after updating the first parameter in update number `at`"
    def __init__(self, lr, at): super().__init__(lr); self.at, self.steps = at, 0
    def step(self, params):
        self.steps += 1
        for i, (p, g) in enumerate(params):
            self.update(p, g, self.state.setdefault(i, {}))
            if self.steps == self.at and i == 0: signal.raise_signal(signal.SIGINT)


class Halt(Exception): pass


class HaltAfter(SGD):
    "SGD that stops the run with an ordinary exception once update number `at` is complete"
    def __init__(self, lr, at): super().__init__(lr); self.at, self.steps = at, 0
    def step(self, params):
        super().step(params); self.steps += 1
        if self.steps == self.at: raise Halt


@pytest.mark.usefixtures('python_sigint')
@pytest.mark.parametrize('momentum', [0.0, 0.9])
def test_ctrl_c_mid_update_leaves_a_complete_step_and_the_history(data, momentum):
    "Issue 12.12: Ctrl-C inside the optimizer left some parameters stepped and others not, and lost the history"
    (x, y), _ = data
    handler = signal.getsignal(signal.SIGINT)
    a, b = spiral_model(), spiral_model()
    a.optimizer, b.optimizer = CtrlC(0.05, at=25), HaltAfter(0.05, at=25)
    a.optimizer.momentum = b.optimizer.momentum = momentum
    with pytest.raises(KeyboardInterrupt):
        a.fit(x, y, epochs=5, batch_size=32, progress=False, verbose=False)   # 10 steps per epoch: update 25 is in epoch 3
    with pytest.raises(Halt):
        b.fit(x, y, epochs=5, batch_size=32, progress=False, verbose=False)
    for k in a.net.params: assert np.array_equal(a.net.params[k], b.net.params[k]), k   # every parameter took update 25
    for i in b.optimizer.state:
        for key in b.optimizer.state[i]: assert np.array_equal(a.optimizer.state[i][key], b.optimizer.state[i][key])
    assert a.history.epochs == 2 and a.history['loss'] == b.history['loss']
    assert signal.getsignal(signal.SIGINT) is handler


@pytest.mark.usefixtures('python_sigint')
def test_ctrl_c_in_train_step_is_delivered_after_the_update(data):
    (x, y), _ = data
    a, b = spiral_model(), spiral_model()
    a.optimizer, b.optimizer = CtrlC(0.05, at=1), SGD(0.05)
    with pytest.raises(KeyboardInterrupt):
        a.train_step(x[:32], y[:32])
    b.train_step(x[:32], y[:32])
    for k in a.net.params: assert np.array_equal(a.net.params[k], b.net.params[k]), k


def test_fit_reshuffles_every_epoch(data):
    "Issue 12.14: re-seeding the generator every epoch (the same order each time) passed the whole suite"
    class OrderSpy(Layer):
        def __init__(self): super().__init__(); self.seen = []
        def forward(self, x):
            if self.training: self.seen.append(x[:, 0].astype(int))
            return x
        def backward(self, grad): return grad
    spy = OrderSpy()
    model = Model(Net([spy, Dense(1, 3, rng=0)]), SoftmaxCrossEntropy(), SGD(0.01))
    model.fit(np.arange(90, dtype=np.float32)[:, None], np.zeros(90, np.int64), epochs=4, batch_size=25, seed=7, progress=False, verbose=False)
    orders = np.concatenate(spy.seen).reshape(4, 90)
    assert all(sorted(o) == list(range(90)) for o in orders)          # each epoch sees every example once
    assert len({tuple(o) for o in orders}) == 4                       # and in a new order
    rng = np.random.default_rng(7)
    assert np.array_equal(orders, [rng.permutation(90) for _ in range(4)])  # one generator, one permutation per epoch
    spy.seen = []
    model.fit(np.arange(90, dtype=np.float32)[:, None], np.zeros(90, np.int64), epochs=2, batch_size=25, shuffle=False, progress=False, verbose=False)
    assert np.array_equal(np.concatenate(spy.seen), np.tile(np.arange(90), 2))


def _conv_checkpoint_meta(layers):
    return {'format': 'tinynn-book checkpoint', 'version': 2,
            'net': {'class': 'Net', 'module': 'tinynn_book.model', 'config': {'layers': layers}},
            'loss': {'class': 'SoftmaxCrossEntropy', 'config': {}}, 'optimizer': {'class': 'Adam', 'config': {}}}


def test_internal_classes_are_refused_when_loading(checkpoint):
    "Issue 12.10: a checkpoint naming _Pool2D loaded into a model whose layer cannot compute anything"
    import tinynn_book.conv  # noqa: F401  (defines _Pool2D)
    meta = _conv_checkpoint_meta([{'class': '_Pool2D', 'module': 'tinynn_book.conv', 'config': {'kernel_size': 2}}])
    rewrite(checkpoint, lambda a: (a.clear(), a.update({'__model__': np.frombuffer(json.dumps(meta).encode(), np.uint8)})))
    with pytest.raises(ValueError, match=r"model.npz.*Layer class '_Pool2D' is internal to its module"):
        Model.load(checkpoint)


@pytest.mark.parametrize('config, message', [
    ({'in_channels': 0, 'out_channels': 3, 'kernel_size': 3}, 'Conv2D expected in_channels to be a positive integer'),
    ({'in_channels': 1, 'out_channels': 3, 'kernel_size': 3, 'stride': -1}, 'Conv2D expected stride'),
    ({'in_channels': 1, 'out_channels': 'x', 'kernel_size': 3}, 'Conv2D expected out_channels'),
])
def test_bad_conv_configs_are_value_errors(checkpoint, config, message):
    meta = _conv_checkpoint_meta([{'class': 'Conv2D', 'module': 'tinynn_book.conv', 'config': config}])
    rewrite(checkpoint, lambda a: (a.clear(), a.update({'__model__': np.frombuffer(json.dumps(meta).encode(), np.uint8)})))
    with pytest.raises(ValueError, match=f'model.npz.*{message}'):
        Model.load(checkpoint)


@pytest.mark.parametrize('layer', [
    # issue 12.1 as filed: a few hundred bytes describing Dense(20000, 20000) cost 4.6 GB before 'missing 0.w'
    {'class': 'Dense', 'module': 'tinynn_book.layers', 'config': {'num_in': 20000, 'num_out': 20000}},
    {'class': 'Conv2D', 'module': 'tinynn_book.conv', 'config': {'in_channels': 2000, 'out_channels': 2000, 'kernel_size': 5}},
], ids=['Dense', 'Conv2D'])
def test_huge_layer_description_is_refused_before_building(checkpoint, layer):
    "Issue 12.1: a layer that states its parameter shapes is refused before it is built (1.6 GB and 400 MB as float32)"
    meta = _conv_checkpoint_meta([dict(layer, dtype='float32')])
    rewrite(checkpoint, lambda a: (a.clear(), a.update({'__model__': np.frombuffer(json.dumps(meta).encode(), np.uint8)})))
    out, peak = _peak_rss_mb(f"""
import tracemalloc; tracemalloc.start()
from tinynn_book.model import Model
try: Model.load({str(checkpoint)!r})
except ValueError as e: print('ERROR', e)
print('TRACED', tracemalloc.get_traced_memory()[1] / 1e6)
""")
    assert 'ERROR' in out and 'refused before building it' in out, out
    traced = float(out.split('TRACED')[-1].split()[0])
    assert traced < 50, f'{traced:.0f} MB allocated'


def test_subclass_with_its_own_config_is_not_judged_by_an_inherited_param_shapes(tmp_path):
    "Only a class's own param_shapes is trusted: a subclass of Conv2D with another config still round-trips"
    from tinynn_book.conv import Conv2D, Flatten
    class SameConv(Conv2D):
        def __init__(self, channels): super().__init__(channels, channels, 3, padding=1, rng=0); self.channels = channels
        def config(self): return dict(channels=self.channels)
    model = Model(Net([SameConv(2), Flatten(), Dense(2 * 4 * 4, 3, rng=1)]), SoftmaxCrossEntropy(), Adam())
    x = np.random.default_rng(0).normal(size=(5, 2, 4, 4)).astype(np.float32)
    loaded = Model.load(model.save(tmp_path / 'same.npz'))
    assert type(loaded.net[0]) is SameConv and np.array_equal(loaded.predict(x), model.predict(x))



# ---- issue 20: signals (1, 17), drop_last (2), a failed step's state (6), repeated layers (8), checkpoint values (10), callbacks (16), modes (19) ----
import os


@pytest.fixture
def python_sigint():
    "Python's own Ctrl-C handler for the test's duration: a suite started with SIGINT ignored (nohup, `pytest &`) has none"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _python(code, timeout=120):
    "Run `code` in a fresh interpreter using this package, with SIGINT, SIGTERM and SIGHUP at their defaults"
    import tinynn_book
    env = dict(os.environ, PYTHONPATH=str(Path(tinynn_book.__file__).parent.parent), OPENBLAS_NUM_THREADS='1')
    def defaults():
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP): signal.signal(s, signal.SIG_DFL)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=timeout,
                          preexec_fn=defaults)


_KILL_DURING_FIT = """
import os, signal, numpy as np
from tinynn_book.layers import Dense, ReLU
from tinynn_book.losses import SoftmaxCrossEntropy
from tinynn_book.model import Model, Net, make_spirals
from tinynn_book.optim import SGD
SIG = signal.{name}
class Kill(SGD):  # a real signal, sent by the process to itself in the middle of update number `at`
    def __init__(self, at): super().__init__(0.05); self.at, self.steps = at, 0
    def step(self, params):
        self.steps += 1
        for i, (p, g) in enumerate(params):
            self.update(p, g, self.state.setdefault(i, {{}}))
            if self.steps == self.at and i == 0: os.kill(os.getpid(), SIG)
class Halt(Exception): pass
class HaltAfter(SGD):
    def __init__(self, at): super().__init__(0.05); self.at, self.steps = at, 0
    def step(self, params):
        super().step(params); self.steps += 1
        if self.steps == self.at: raise Halt
net = lambda: Net([Dense(2, 32, rng=0), ReLU(), Dense(32, 3, rng=1)])
x, y = make_spirals(100, rng=0)
a, b = Model(net(), SoftmaxCrossEntropy(), Kill(25)), Model(net(), SoftmaxCrossEntropy(), HaltAfter(25))
try: a.fit(x, y, epochs=5, batch_size=32, progress=False, verbose=False)
except KeyboardInterrupt as e: caught = e
try: b.fit(x, y, epochs=5, batch_size=32, progress=False, verbose=False)
except Halt: pass
assert type(caught).__name__ == 'Interrupted' and caught.signum == SIG and caught.exit_code == 128 + SIG, repr(caught)
assert all(np.array_equal(a.net.params[k], b.net.params[k]) for k in a.net.params)  # update 25 complete, nothing after it
assert a.history.epochs == 2 and a.history['loss'] == b.history['loss']
assert signal.getsignal(SIG) == signal.SIG_DFL  # fit put the default back
print('ok')
"""


@pytest.mark.parametrize('name', ['SIGTERM', 'SIGHUP'])
def test_sigterm_and_sighup_during_fit_end_it_like_ctrl_c(name):
    "Issue 20.1: SIGTERM (kill, timeout, docker stop) and SIGHUP killed a run outright; now fit raises Interrupted after a complete update"
    r = _python(_KILL_DURING_FIT.format(name=name))
    assert r.returncode == 0 and r.stdout.strip() == 'ok', (r.returncode, r.stderr[-2000:])


def test_stop_signals_someone_handles_or_ignores_are_left_alone(data):
    (x, y), _ = data
    seen = []
    class Watch(Callback):
        def on_epoch_end(self, model, history): seen.append((signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)))
    mine = lambda *args: None
    before = signal.signal(signal.SIGTERM, mine), signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        spiral_model().fit(x, y, epochs=1, progress=False, verbose=False, callbacks=Watch())
        assert seen == [(mine, signal.SIG_IGN)] and signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before[0]); signal.signal(signal.SIGHUP, before[1])


def test_ctrl_c_tests_pass_when_started_with_sigint_ignored():
    "Issue 20.17: started with SIGINT ignored (nohup, `pytest &`), the Ctrl-C tests saw no KeyboardInterrupt"
    here = Path(__file__)
    code = f"""
import signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)   # what `cmd &` in a non-interactive shell, and nohup, leave the child
sys.exit(subprocess.call([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', {str(here)!r}, '-k', 'ctrl_c_mid_update or ctrl_c_in_train_step']))
"""
    r = _python(code, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def _bn_model(seed=0):
    pytest.importorskip('tinynn_book.regularization')
    from tinynn_book.regularization import BatchNorm1d
    net = Net([Dense(2, 16, rng=seed), BatchNorm1d(16), ReLU(), Dense(16, 3, rng=seed + 1)])
    return Model(net, SoftmaxCrossEntropy(), Adam(0.01))


def test_a_failed_step_leaves_parameters_and_batchnorm_state_as_they_were(data):
    "Issue 20.6: one NaN batch made BatchNorm's running statistics NaN for good, while the error said nothing had changed"
    (x, y), _ = data
    model = _bn_model()
    model.fit(x, y, epochs=1, batch_size=32, progress=False, verbose=False)
    params = {k: p.copy() for k, p in model.net.params.items()}
    state = {k: s.copy() for k, s in model.net.state.items()}
    bad = x[:32].copy(); bad[5] = np.nan
    with pytest.raises(FloatingPointError, match="keep their values from before this step, and so does every layer's state"):
        model.train_step(bad, y[:32])
    for k, s in model.net.state.items(): np.testing.assert_array_equal(s, state[k], err_msg=k)
    for k, p in model.net.params.items(): np.testing.assert_array_equal(p, params[k], err_msg=k)
    x_nan = x.copy(); x_nan[70] = np.nan   # inside fit: third batch of the epoch, unshuffled
    with pytest.raises(FloatingPointError, match='step 3/10'):
        model.fit(x_nan, y, epochs=1, batch_size=32, shuffle=False, progress=False, verbose=False)
    assert all(np.all(np.isfinite(s)) for s in model.net.state.values())
    assert np.isfinite(model.evaluate(x, y)['loss'])   # evaluation uses the running statistics


def test_an_interrupted_forward_pass_leaves_the_state_as_it_was(data):
    (x, y), _ = data
    model = _bn_model()
    state = {k: s.copy() for k, s in model.net.state.items()}
    def interrupted(logits, y): raise KeyboardInterrupt
    model.loss.loss = interrupted   # after the forward pass has updated the running statistics
    with pytest.raises(KeyboardInterrupt):
        model.train_step(x[:32], y[:32])
    for k, s in model.net.state.items(): np.testing.assert_array_equal(s, state[k], err_msg=k)


def test_drop_last_leaves_out_a_short_last_batch(data):
    "Issue 20.2: a last batch of one crashed BatchNorm after training had started; fit(drop_last=True) leaves it out"
    (x, y), _ = data
    x33, y33 = x[:33], y[:33]   # batches of 32 and 1
    with pytest.raises(ValueError, match='more than one value per channel'):
        _bn_model().fit(x33, y33, epochs=1, batch_size=32, progress=False, verbose=False)
    sizes = []
    model = _bn_model()
    real_step = model._step
    model._step = lambda xb, yb: (sizes.append(len(xb)), real_step(xb, yb))[1]
    history = model.fit(x, y, epochs=2, batch_size=32, drop_last=True, progress=False, verbose=False)   # 300 = 9 * 32 + 12
    assert sizes == [32] * 18 and history.epochs == 2 and np.isfinite(history['loss']).all()
    _bn_model().fit(x33, y33, epochs=1, batch_size=32, drop_last=True, progress=False, verbose=False)
    with pytest.raises(ValueError, match=r'drop_last=True needs at least batch_size=64 examples, got 33'):
        _bn_model().fit(x33, y33, epochs=1, batch_size=64, drop_last=True, progress=False, verbose=False)


def test_one_layer_object_twice_in_a_net_is_refused():
    "Issue 20.8: Net([Dense, r, Dense, r, Dense]) trained with gradients off by ~0.6 and saved an untied checkpoint"
    r = ReLU()
    with pytest.raises(ValueError, match=r'one ReLU object is at positions 1 and 3'):
        Net([Dense(2, 4), r, Dense(4, 4), r, Dense(4, 2)])
    d = Dense(2, 2)
    with pytest.raises(ValueError, match=r'one Dense object is at positions 0 and 1\.1'):
        Net([d, Net([ReLU(), d])])
    inner = Net([Dense(2, 2), ReLU()])
    with pytest.raises(ValueError, match=r'one Net object is at positions 0 and 1'):
        Net([inner, inner])
    with pytest.raises(ValueError, match=r'positions 1 and 3'):
        Model([Dense(2, 4), r, Dense(4, 4), r], MSE(), SGD(0.1))
    from tinynn_book.model import MAX_NESTING
    net = Net([Dense(2, 2)])
    for _ in range(MAX_NESTING - 1): net = Net([net])   # the deepest nesting allowed is walked without recursion
    Net([ReLU(), ReLU(), Dense(2, 2)])        # equal but distinct objects are fine


@pytest.mark.parametrize('key, value, message', [
    ('0.w', np.nan, r"array '0.w' holds NaN or inf"), ('3.b', np.inf, r"array '3.b' holds NaN or inf"),
    ('state.1.running_mean', np.nan, r"array 'state.1.running_mean' holds NaN or inf"),
    ('state.1.running_var', -1.0, r"array 'state.1.running_var' is a variance but holds negative values")])
def test_checkpoints_with_impossible_values_are_refused(data, tmp_path, key, value, message):
    "Issue 20.10: a checkpoint with NaN/inf weights or state, or a negative running_var, loaded silently and predicted NaN"
    (x, y), _ = data
    model = _bn_model()
    model.fit(x, y, epochs=1, batch_size=32, progress=False, verbose=False)
    good = model.save(tmp_path/'good.npz')
    with np.load(good) as f: arrays = dict(f)
    arrays[key] = arrays[key].copy(); arrays[key].flat[0] = value
    np.savez(tmp_path/'bad.npz', **arrays)
    with pytest.raises(ValueError, match=message):
        Model.load(tmp_path/'bad.npz')
    Model.load(good)


def test_callbacks_none_and_a_callback_class(data):
    "Issue 20.16: fit(callbacks=None) and fit(callbacks=SomeCallback) (the class, not an instance) were opaque TypeErrors"
    (x, y), _ = data
    assert spiral_model().fit(x, y, epochs=1, callbacks=None, progress=False, verbose=False).epochs == 1
    with pytest.raises(TypeError, match=r'got the class Recorder: pass an instance, Recorder\(\.\.\.\)'):
        spiral_model().fit(x, y, epochs=1, callbacks=Recorder, progress=False, verbose=False)
    with pytest.raises(TypeError, match=r'got the class Recorder'):
        spiral_model().fit(x, y, epochs=1, callbacks=[Recorder], progress=False, verbose=False)


class ModeSpy(Layer):
    "Identity that records the training flag it saw at each forward pass"
    def __init__(self): super().__init__(); self.seen = []
    def forward(self, x): self.seen.append(self.training); return x
    def backward(self, grad): return grad


def test_predict_and_evaluate_run_in_evaluation_mode_and_restore_the_mode(data):
    "Issue 20.19: predict/evaluate leaving the net in training mode was caught only by a notebook"
    (x, y), _ = data
    spy = ModeSpy()
    model = Model(Net([Dense(2, 3, rng=0), spy]), SoftmaxCrossEntropy(), SGD(0.1))
    for training in (True, False):
        model.net.train(training); spy.seen.clear()
        model.predict(x, batch_size=100); model.evaluate(x, y, batch_size=100)
        assert spy.seen == [False] * 6 and model.net.training is training and spy.training is training
    model.net.train(); spy.seen.clear()
    model.fit(x, y, epochs=1, batch_size=100, validation_data=(x, y), progress=False, verbose=False)
    assert spy.seen == [True] * 3 + [False] and spy.training is True


# ---- Issue 20.15: nets nested hundreds deep trained, then repr and save raised RecursionError -------------------------
def _nested(depth):
    "`depth` nets, each inside the next, around a Dense and a ReLU"
    net = Net([Dense(2, 3, rng=0), ReLU()])
    for _ in range(depth - 1): net = Net([net])
    return net


def test_a_net_nested_to_the_limit_prints_trains_saves_and_loads(tmp_path):
    "At MAX_NESTING everything that recurses through the nesting still works, at Python's default recursion limit"
    from tinynn_book.model import MAX_NESTING
    net = _nested(MAX_NESTING)
    assert repr(net).count('Net(') == MAX_NESTING
    model = Model(net, MSE(), SGD(0.1))
    x, y = np.ones((4, 2), np.float32), np.zeros((4, 3), np.float32)
    model.fit(x, y, epochs=2, batch_size=2, progress=False, verbose=False)
    assert len(model.summary(2).rows) == 2 and model.summary(2).total_params == 9
    assert list(net.params) == ['.'.join(['0'] * MAX_NESTING) + '.w', '.'.join(['0'] * MAX_NESTING) + '.b']
    loaded = Model.load(model.save(tmp_path / 'deep.npz'))
    assert repr(loaded.net) == repr(net)
    assert np.array_equal(loaded.predict(x), model.predict(x))
    net.needs_input_grad = True   # Model switched it off
    net.astype(np.float64).eval(); assert net.backward(net.forward(x)).shape == (4, 2)


def test_a_net_nested_deeper_than_the_limit_is_refused_at_construction():
    from tinynn_book.model import MAX_NESTING
    net = _nested(MAX_NESTING)
    with pytest.raises(ValueError, match=rf'^Net: layers nested {MAX_NESTING + 1} deep, but a Net nests at most MAX_NESTING = {MAX_NESTING}'):
        Net([net])
    with pytest.raises(ValueError, match=rf'nested {MAX_NESTING + 1} deep'):
        Net([Dense(2, 2), ReLU(), Net([Dense(2, 2)]), net])   # the deepest branch counts, wherever it is
    with pytest.raises(ValueError, match=rf'nested {MAX_NESTING + 1} deep'):
        Model(Net([net]), MSE(), SGD(0.1))


def _deep_description(depth):
    "The JSON text of a net description with `depth` Nets, each inside the next, around one Dense(2, 3)"
    leaf = json.dumps(describe(Dense(2, 3)))
    return '{"class": "Net", "module": "tinynn_book.model", "config": {"layers": [' * depth + leaf + ']}}' * depth


def _load_deep(checkpoint, monkeypatch, depth):
    "Model.load of `checkpoint` rewritten to describe `depth` nested nets: the ValueError, and whether anything was built"
    import tinynn_book.model as model_module
    def meta(a):
        m = json.loads(a['__model__'].tobytes())
        text = json.dumps(m).replace(json.dumps(m['net']), _deep_description(depth))
        a.update({'__model__': np.frombuffer(text.encode(), np.uint8)})
    rewrite(checkpoint, meta)
    built = []
    monkeypatch.setattr(model_module, 'rebuild', lambda *args: built.append(args))
    with pytest.raises(ValueError, match='model.npz') as e:
        Model.load(checkpoint)
    return str(e.value), built


def test_a_checkpoint_describing_a_net_nested_too_deep_is_refused_before_building(checkpoint, monkeypatch):
    from tinynn_book.model import MAX_NESTING
    message, built = _load_deep(checkpoint, monkeypatch, MAX_NESTING + 1)
    assert f'describes layers nested {MAX_NESTING + 1} deep, but a Net nests at most MAX_NESTING = {MAX_NESTING}' in message
    assert 'refused before building anything' in message and not built


def test_a_description_too_deep_for_json_loads_is_a_value_error(checkpoint, monkeypatch):
    "json.loads itself raises RecursionError at this depth: the loader says what is wrong instead"
    message, built = _load_deep(checkpoint, monkeypatch, 5000)
    assert "its '__model__' entry nests too deep to read; a Net nests at most MAX_NESTING" in message and not built
