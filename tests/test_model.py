"The installed tinynn_book.model from the outside: training, history, summary, checkpoints and their failure modes."
import json, math
import numpy as np
import pytest
from tinynn_book.layers import Dense, Layer, ReLU, Tanh
from tinynn_book.losses import MSE, SoftmaxCrossEntropy
from tinynn_book.model import History, Model, Net, accuracy, make_spirals
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
