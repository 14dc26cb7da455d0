"The installed package from the outside: chapter 07 (regularization): Dropout, BatchNorm1d/2d, LayerNorm, EarlyStopping."
import subprocess, sys
import numpy as np
import pytest

from tinynn_book.layers import Dense, Layer, ReLU, check_layer_grads
from tinynn_book.conv import Conv2D, Flatten, MaxPool2D
from tinynn_book.losses import SoftmaxCrossEntropy
from tinynn_book.optim import Adam
from tinynn_book.model import Model, Net, describe, make_spirals, rebuild
from tinynn_book.regularization import BatchNorm1d, BatchNorm2d, Dropout, EarlyStopping, LayerNorm, normalize, normalize_backward

NORMS = {'BatchNorm1d': (lambda: BatchNorm1d(5), (6, 5)), 'BatchNorm2d': (lambda: BatchNorm2d(3), (4, 3, 5, 6)),
         'LayerNorm': (lambda: LayerNorm(5), (6, 5)), 'LayerNorm2': (lambda: LayerNorm((3, 4)), (2, 3, 3, 4))}


def _randomise(layer, rng):
    layer.params['gamma'][...] = rng.uniform(0.5, 2.0, layer.params['gamma'].shape)
    layer.params['beta'][...] = rng.normal(size=layer.params['beta'].shape)
    return layer


class SameMaskDropout(Dropout):
    def forward(self, x):
        self.rng = np.random.default_rng(0)
        return super().forward(x)


# ---------------------------------------------------------------- gradients (float64, central differences)
@pytest.mark.parametrize('name', NORMS)
@pytest.mark.parametrize('training', [True, False], ids=['training', 'evaluation'])
def test_norm_gradients(name, training):
    make, shape = NORMS[name]
    rng = np.random.default_rng(0)
    layer = _randomise(make(), rng).astype(np.float64)
    layer(rng.normal(size=shape))  # one training step moves BatchNorm's running statistics off (0, 1)
    layer.training = training
    errs = check_layer_grads(layer, rng.normal(1.0, 2.0, size=shape))
    assert set(errs) == {'x', 'gamma', 'beta'} and max(errs.values()) < 1e-7, errs


def test_dropout_gradient_and_statistics():
    rng = np.random.default_rng(0)
    assert check_layer_grads(SameMaskDropout(0.4), rng.normal(size=(4, 5)))['x'] < 1e-8
    y = Dropout(0.3, rng=0)(np.ones((2000, 50)))
    assert abs((y == 0).mean() - 0.3) < 0.01 and abs(y.mean() - 1) < 0.02
    np.testing.assert_array_equal(np.unique(y), [0, 1 / 0.7])


def test_closed_form_matches_staged_backward():
    "Equation (7) against the node-by-node walk through the graph (6)"
    rng = np.random.default_rng(1)
    x, g = rng.normal(2, 3, size=(7, 4)), rng.normal(size=(7, 4))
    eps = 1e-5
    m = len(x); mu = x.mean(0); xbar = x - mu; var = (xbar**2).mean(0); s = 1 / np.sqrt(var + eps)
    d_s = (g * xbar).sum(0); d_var = d_s * -0.5 * (var + eps)**-1.5
    d_xbar = g * s + d_var * 2 * xbar / m
    staged = d_xbar - d_xbar.sum(0) / m
    xhat, _, _, s2 = normalize(x, (0,), eps)
    np.testing.assert_allclose(normalize_backward(g, xhat, s2, (0,)), staged, atol=1e-12)


class BrokenBatchNorm(BatchNorm1d):
    "BatchNorm whose backward forgets the paths through the mean and variance (treats them as constants)"
    def backward(self, grad):
        super().backward(grad)
        return grad * self.params['gamma'] * self.s


def test_gradient_check_catches_a_broken_backward():
    rng = np.random.default_rng(0)
    assert check_layer_grads(_randomise(BrokenBatchNorm(4), rng), rng.normal(size=(6, 4)))['x'] > 1e-2


# ---------------------------------------------------------------- modes, state, dtypes, errors
def test_running_statistics_and_eval_before_training():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, size=(10, 4))
    bn = BatchNorm1d(4).astype(np.float64)
    bn.training = False
    np.testing.assert_allclose(bn(x), x / np.sqrt(1 + 1e-5))  # initial running statistics (0, 1), as PyTorch
    bn.training = True
    mean_id, var_id = id(bn.running_mean), id(bn.running_var)
    for _ in range(3): bn(x)
    assert id(bn.running_mean) == mean_id and id(bn.running_var) == var_id  # updated in place
    np.testing.assert_allclose(bn.running_mean, (1 - 0.9**3) * x.mean(0))
    np.testing.assert_allclose(bn.running_var, 0.9**3 + (1 - 0.9**3) * x.var(0, ddof=1))
    x4 = rng.normal(size=(3, 2, 4, 5))
    bn2 = BatchNorm2d(2, momentum=0.5).astype(np.float64)
    bn2(x4)
    np.testing.assert_allclose(bn2.running_var, 0.5 + 0.5 * x4.transpose(1, 0, 2, 3).reshape(2, -1).var(1, ddof=1))


@pytest.mark.parametrize('make', [lambda: BatchNorm1d(3), lambda: LayerNorm(3), lambda: Dropout(0.5)], ids=['BN', 'LN', 'Dropout'])
def test_float32_stays_float32(make):
    layer = make()
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and layer.backward(np.ones_like(y)).dtype == np.float32


def test_astype_casts_state():
    bn = BatchNorm2d(3).astype(np.float64)
    assert bn.running_mean.dtype == bn.running_var.dtype == bn.params['gamma'].dtype == np.float64


def test_bad_input():
    with pytest.raises(ValueError, match=r'BatchNorm1d\(num_features=3, eps=1e-05, momentum=0.1\) in training mode needs more than one value'):
        BatchNorm1d(3)(np.ones((1, 3)))
    with pytest.raises(ValueError, match=r'BatchNorm2d\(num_features=3.*got input of shape \(1, 3, 1, 1\)'):
        BatchNorm2d(3)(np.ones((1, 3, 1, 1)))
    with pytest.raises(ValueError, match=r'BatchNorm2d\(num_features=6.*expected input of shape \(N, 6, H, W\), got \(2, 16, 5, 5\)'):
        BatchNorm2d(6)(np.ones((2, 16, 5, 5)))
    with pytest.raises(ValueError, match=r'BatchNorm1d\(num_features=3.*expected input of shape \(N, 3\), got \(4, 5\)'):
        BatchNorm1d(3)(np.ones((4, 5)))
    with pytest.raises(ValueError, match=r'LayerNorm\(normalized_shape=4, eps=1e-05\) expected input of shape \(\.\.\., 4\), got \(2, 5\)'):
        LayerNorm(4)(np.ones((2, 5)))
    for p in (1, 1.0, -0.1, 2, None):
        with pytest.raises(ValueError, match=r'Dropout expected a probability p in \[0, 1\)'): Dropout(p)
    for bad in (dict(num_features=0), dict(num_features=3, eps=0), dict(num_features=3, momentum=-0.1),
                dict(num_features=3, eps=float('inf')), dict(num_features=3, momentum=float('nan')), dict(num_features=True)):
        with pytest.raises(ValueError, match='BatchNorm1d expected'): BatchNorm1d(**bad)
    for eps in (0, float('inf'), float('nan'), 'x'):   # issue 12.10: eps=inf made every output 0, silently
        with pytest.raises(ValueError, match='LayerNorm expected eps'): LayerNorm(4, eps=eps)
    bn = BatchNorm1d(3); bn.training = False
    assert bn(np.ones((1, 3))).shape == (1, 3)  # evaluation mode takes a single example


def test_dropout_modes_and_seed():
    x = np.ones((50, 20))
    np.testing.assert_array_equal(Dropout(0.5, rng=3)(x), Dropout(0.5, rng=3)(x))
    d = Dropout(0.5); d.training = False
    np.testing.assert_array_equal(d(x), x); np.testing.assert_array_equal(d.backward(x), x)
    np.testing.assert_array_equal(Dropout(0.0)(x), x)


@pytest.mark.parametrize('layer', [Dropout(0.25), BatchNorm1d(4, eps=1e-3, momentum=0.2), BatchNorm2d(2), LayerNorm((3, 4))], ids=repr)
def test_config_rebuilds_the_layer(layer):
    copy = rebuild(Layer, describe(layer))
    assert type(copy) is type(layer) and copy.config() == layer.config() and repr(copy) == repr(layer)


def test_summary_counts_gamma_and_beta_only():
    net = Net([Flatten(), Dense(784, 16), BatchNorm1d(16), ReLU(), Dropout(0.5), Dense(16, 10)])
    rows = Model(net, SoftmaxCrossEntropy(), Adam()).summary((1, 28, 28)).rows
    assert [r[2] for r in rows] == [0, 0, 784 * 16 + 16, 32, 0, 0, 170]


# ---------------------------------------------------------------- checkpoints and early stopping (chapter 5 infrastructure)
def _bn_lenet(rng=0):
    rng = np.random.default_rng(rng)
    return Net([Conv2D(1, 4, 5, padding=2, rng=rng), BatchNorm2d(4), ReLU(), MaxPool2D(2), Flatten(),
                Dense(4 * 14 * 14, 32, rng=rng), BatchNorm1d(32), ReLU(), Dropout(0.3, rng=rng), Dense(32, 10, rng=rng)])


def test_checkpoint_round_trip_keeps_running_statistics(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 64)
    model = Model(_bn_lenet(), SoftmaxCrossEntropy(), Adam(1e-2))
    model.fit(x, y, 2, batch_size=16, progress=False, verbose=False)
    loaded = Model.load(model.save(tmp_path/'bn.npz'))
    assert set(model.net.state) == {'1.running_mean', '1.running_var', '6.running_mean', '6.running_var'}
    for k, s in model.net.state.items(): np.testing.assert_array_equal(loaded.net.state[k], s)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    model.net.astype(np.float64)
    loaded64 = Model.load(model.save(tmp_path/'bn64.npz'))
    assert all(s.dtype == np.float64 for s in loaded64.net.state.values())
    np.testing.assert_array_equal(loaded64.predict(x), model.predict(x))


def test_early_stopping_stops_and_restores_params_and_state():
    x, y = make_spirals(100, rng=0); xv, yv = make_spirals(50, rng=1)
    model = Model(Net([Dense(2, 64, rng=0), BatchNorm1d(64), ReLU(), Dense(64, 3, rng=1)]), SoftmaxCrossEntropy(), Adam(0.05))
    stopper = EarlyStopping(patience=3)
    h = model.fit(x, y, 200, batch_size=32, validation_data=(xv, yv), progress=False, verbose=False, callbacks=[stopper])
    assert h.stopped_epoch == stopper.best_epoch + 3 < 200
    assert stopper.best_value == min(h['val_loss'])
    assert model.evaluate(xv, yv)['loss'] == h['val_loss'][stopper.best_epoch - 1]  # bit for bit: params and state restored


def test_early_stopping_errors_and_accuracy_mode():
    x, y = make_spirals(30, rng=0)
    model = Model(Net([Dense(2, 3, rng=0)]), SoftmaxCrossEntropy(), Adam(0.05))
    with pytest.raises(ValueError, match='pass validation_data'):
        model.fit(x, y, 2, progress=False, verbose=False, callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match="'val_acc' is not in the history"):
        model.fit(x, y, 2, validation_data=(x, y), progress=False, verbose=False, callbacks=[EarlyStopping(monitor='val_acc')])
    with pytest.raises(ValueError, match='patience'): EarlyStopping(patience=-1)
    stopper = EarlyStopping(patience=0, monitor='accuracy', restore_best=False)
    h = model.fit(x, y, 50, validation_data=(x, y), progress=False, verbose=False, callbacks=[stopper])
    assert stopper.best_value == max(h['accuracy'])           # higher is better for accuracies
    assert h.stopped_epoch == stopper.best_epoch + 1 and h['accuracy'][-1] <= stopper.best_value  # patience 0: first non-improvement


# ---------------------------------------------------------------- train to a threshold on the bundled sample
def test_small_batchnorm_net_trains_on_the_sample():
    from tinynn_book.mnist import load_mnist
    (x, y), _ = load_mnist(sample=True)
    rng = np.random.default_rng(0)
    net = Net([Flatten(), Dense(784, 100, rng=rng), BatchNorm1d(100), ReLU(), Dropout(0.2, rng=rng), Dense(100, 10, rng=rng)])
    model = Model(net, SoftmaxCrossEntropy(), Adam(1e-3))
    model.fit(x[:5000], y[:5000], 2, batch_size=64, progress=False, verbose=False)
    assert model.evaluate(x[5000:], y[5000:])['accuracy'] > 0.85  # held-out training images, not the test set


def test_chapter6_does_not_import_chapter7():
    "tinynn_book.mnist and every module it imports, followed through the package: none imports chapter 7's module"
    import ast, tinynn_book
    from pathlib import Path
    pkg = Path(tinynn_book.__file__).parent   # (the package's __init__ imports every chapter, so sys.modules cannot tell)
    def imports(name):
        tree = ast.parse((pkg / f'{name}.py').read_text())
        found = {a.name.split('.')[1] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                 if a.name.startswith('tinynn_book.')}
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and (n.level == 1 or (n.module or '').startswith('tinynn_book')):
                mod = (n.module or '').removeprefix('tinynn_book').lstrip('.')
                found |= {mod.split('.')[0]} if mod else {a.name for a in n.names}
        return found & {p.stem for p in pkg.glob('*.py')}
    seen, todo = set(), ['mnist']
    while todo:
        name = todo.pop()
        if name not in seen: seen.add(name); todo += imports(name)
    assert 'model' in seen and 'regularization' not in seen, seen
    assert 'regularization' in imports('cli')   # the walk does find the import where there is one


# ---------------------------------------------------------------- PyTorch parity (float64); skipped without torch
def _torch_pair(torch, ours, theirs, rng):
    ours.astype(np.float64); theirs.double()
    for k, name in (('gamma', 'weight'), ('beta', 'bias')):
        if k in ours.params:
            ours.params[k][...] = rng.normal(1.0, 0.5, ours.params[k].shape)
            getattr(theirs, name).data.copy_(torch.from_numpy(ours.params[k]))


@pytest.mark.parametrize('name', ['BatchNorm1d', 'BatchNorm2d', 'LayerNorm', 'LayerNorm2'])
def test_parity_with_pytorch(name):
    torch = pytest.importorskip('torch')
    nn, rng = torch.nn, np.random.default_rng(0)
    ours, theirs, shape = {'BatchNorm1d': (BatchNorm1d(5, momentum=0.2), nn.BatchNorm1d(5, momentum=0.2), (16, 5)),
                           'BatchNorm2d': (BatchNorm2d(3), nn.BatchNorm2d(3), (4, 3, 6, 6)),
                           'LayerNorm': (LayerNorm(5), nn.LayerNorm(5), (16, 5)),
                           'LayerNorm2': (LayerNorm((3, 4)), nn.LayerNorm((3, 4)), (8, 2, 3, 4))}[name]
    _torch_pair(torch, ours, theirs, rng)
    for step in range(6):
        if step == 5: ours.training = False; theirs.eval()  # evaluation-mode outputs and input gradients last
        x, g = rng.normal(2.0, 3.0, shape), rng.normal(size=shape)
        xt = torch.from_numpy(x).requires_grad_(True)
        yt = theirs(xt); yt.backward(torch.from_numpy(g))
        np.testing.assert_allclose(ours(x), yt.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(ours.backward(g), xt.grad.numpy(), atol=1e-12)
        np.testing.assert_allclose(ours.grads['gamma'], theirs.weight.grad.numpy(), atol=1e-12)
        np.testing.assert_allclose(ours.grads['beta'], theirs.bias.grad.numpy(), atol=1e-12)
        for k in getattr(ours, 'state_names', ()):
            np.testing.assert_allclose(getattr(ours, k), getattr(theirs, k).numpy(), atol=1e-12)
        theirs.zero_grad()


def test_dropout_parity_with_pytorch():
    torch = pytest.importorskip('torch')
    x = np.random.default_rng(0).normal(size=(8, 5))
    ours, theirs = Dropout(0.0), torch.nn.Dropout(0.0)
    np.testing.assert_array_equal(ours(x), theirs(torch.from_numpy(x)).numpy())
    ours, theirs = Dropout(0.5), torch.nn.Dropout(0.5).eval()
    ours.training = False
    np.testing.assert_array_equal(ours(x), theirs(torch.from_numpy(x)).numpy())
    # in training mode the masks differ (different generators), but the kept values are scaled alike
    y, yt = Dropout(0.5, rng=0)(x), torch.nn.Dropout(0.5)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y[y != 0], 2 * x[y != 0]); np.testing.assert_allclose(yt[yt != 0], 2 * x[yt != 0])


def test_bn_mlp_trains_exactly_like_pytorch():
    "Dense-BatchNorm-ReLU-Dense with Adam, float64, 10 steps: losses, weights and running statistics follow PyTorch"
    torch = pytest.importorskip('torch')
    nn, rng = torch.nn, np.random.default_rng(0)
    net = Net([Dense(6, 8, rng=0), BatchNorm1d(8), ReLU(), Dense(8, 3, rng=1)]).astype(np.float64)
    model = Model(net, SoftmaxCrossEntropy(), Adam(1e-2))
    twin = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        for i in (0, 3):
            twin[i].weight.copy_(torch.from_numpy(net[i].params['w'].T.copy())); twin[i].bias.copy_(torch.from_numpy(net[i].params['b']))
    opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    for _ in range(10):
        x, y = rng.normal(size=(16, 6)), rng.integers(0, 3, 16)
        loss = model.train_step(x, y)
        opt.zero_grad(); ref = nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y)); ref.backward(); opt.step()
        assert abs(loss - ref.item()) < 1e-10
    np.testing.assert_allclose(net[0].params['w'].T, twin[0].weight.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(net[1].params['gamma'], twin[1].weight.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(net[1].running_mean, twin[1].running_mean.numpy(), atol=1e-10)
    np.testing.assert_allclose(net[1].running_var, twin[1].running_var.numpy(), atol=1e-10)
    twin.eval(); x = rng.normal(size=(5, 6))
    np.testing.assert_allclose(model.predict(x), twin(torch.from_numpy(x)).detach().numpy(), atol=1e-10)


def _norm_checkpoint(path, spec):
    "A checkpoint file holding only the description of a net made of the one layer `spec` (no arrays at all)"
    import json
    meta = {'format': 'tinynn-book checkpoint', 'version': 2,
            'net': {'class': 'Net', 'module': 'tinynn_book.model', 'config': {'layers': [spec]}},
            'loss': {'class': 'SoftmaxCrossEntropy', 'config': {}}, 'optimizer': {'class': 'Adam', 'config': {}}}
    np.savez(path, __model__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return path


@pytest.mark.parametrize('cls, config', [('BatchNorm1d', {'num_features': 10**9, 'eps': 1e-5, 'momentum': 0.1}),
                                         ('BatchNorm2d', {'num_features': 10**9, 'eps': 1e-5, 'momentum': 0.1}),
                                         ('LayerNorm', {'normalized_shape': [100_000, 100_000], 'eps': 1e-5})])
def test_huge_norm_description_is_refused_before_building(tmp_path, cls, config):
    "Issue 12.1: a few hundred bytes describing BatchNorm1d(10**9) would allocate 16 GB (γ, β, gradients, running statistics)"
    import os, tinynn_book
    from pathlib import Path
    path = _norm_checkpoint(tmp_path/'huge.npz', {'class': cls, 'module': 'tinynn_book.regularization', 'dtype': 'float32', 'config': config})
    code = f"""
import tracemalloc; tracemalloc.start()
from tinynn_book.model import Model
try: Model.load({str(path)!r})
except ValueError as e: print('ERROR', e)
print('TRACED', tracemalloc.get_traced_memory()[1] / 1e6)
"""
    env = dict(os.environ, PYTHONPATH=str(Path(tinynn_book.__file__).parent.parent))  # the package under test
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'ERROR' in r.stdout and 'refused before building it' in r.stdout and str(path) in r.stdout, r.stdout
    traced = float(r.stdout.split('TRACED')[-1])
    assert traced < 50, f'{traced:.0f} MB allocated'


@pytest.mark.parametrize('layer', [BatchNorm1d(5), BatchNorm2d(3), LayerNorm(7), LayerNorm((3, 4))], ids=repr)
def test_param_shapes_match_the_built_layer(layer):
    cls = type(layer)
    assert 'param_shapes' in vars(cls)   # the loader trusts only a class's own param_shapes
    assert cls.param_shapes(layer.config()) == {k: p.shape for k, p in layer.params.items()}


# ---------------------------------------------------------------- issue 20: careless input and mutants that survived
from tinynn_book.losses import MSE
from tinynn_book.model import History


def _history(values, key='val_loss'):
    "A History holding `values` under `key`, one epoch per value, as fit builds it"
    h = History()
    for v in values: h.append(**{key: v, 'loss': 1.0})
    return h


def _feed(stopper, values, key=None, model=None):
    "Call the stopper's hooks as fit does for the monitored values `values`; returns the epoch it stopped after (or None)"
    model = model or Model(Net([Dense(2, 3, rng=0)]), SoftmaxCrossEntropy(), Adam())
    stopper.on_train_begin(model)
    h = History()
    for v in values:
        h.append(**{key or stopper.monitor: v, 'loss': 1.0})
        if stopper.on_epoch_end(model, h): return h.epochs
    return None


@pytest.mark.parametrize('values', [[0.5, float('nan')], [float('nan')], [0.5, float('inf')]], ids=['nan-later', 'nan-first', 'inf'])
def test_early_stopping_refuses_a_non_finite_monitored_value(values):
    "Issue 20.9: a NaN val_loss compared False with everything, so the epoch-1 weights came back silently"
    with pytest.raises(ValueError, match=r"EarlyStopping: 'val_loss' is (nan|inf) at epoch \d, not a finite number"):
        _feed(EarlyStopping(patience=3), values)


@pytest.mark.parametrize('kwargs, match', [
    (dict(min_delta=float('nan')), 'EarlyStopping expected min_delta to be a finite number >= 0, got nan'),
    (dict(min_delta=-0.1), 'EarlyStopping expected min_delta to be a finite number >= 0, got -0.1'),
    (dict(min_delta='0.1'), "EarlyStopping expected min_delta to be a finite number >= 0, got '0.1'"),
    (dict(monitor=None), 'EarlyStopping expected monitor to be the name of a History key'),
    (dict(monitor=3), 'EarlyStopping expected monitor to be the name of a History key'),
    (dict(patience=2.5), 'EarlyStopping expected a non-negative integer patience, got 2.5'),
    (dict(restore_best='yes'), "EarlyStopping expected restore_best to be True or False, got 'yes'")], ids=str)
def test_early_stopping_bad_arguments(kwargs, match):
    "Issues 20.9 and 20.16: a NaN min_delta and monitor=None were accepted (or a raw TypeError)"
    with pytest.raises(ValueError, match=match.replace('(', r'\(').replace(')', r'\)')): EarlyStopping(**kwargs)


@pytest.mark.parametrize('monitor', ['val_accuracy', 'accuracy'])
def test_early_stopping_on_accuracy_with_a_loss_that_has_none(monitor):
    "Issue 20.16: with MSE there is no accuracy; the error said 'pass validation_data' although it was passed"
    x, y = make_spirals(20, rng=0)
    targets = np.eye(3, dtype=np.float32)[y]
    model = Model(Net([Dense(2, 3, rng=0)]), MSE(), Adam())
    with pytest.raises(ValueError, match=rf"EarlyStopping monitors '{monitor}', but the loss MSE\(\) has no accuracy") as e:
        model.fit(x, targets, 2, validation_data=(x, targets), progress=False, verbose=False, callbacks=[EarlyStopping(monitor=monitor)])
    assert 'pass validation_data' not in str(e.value)


def test_early_stopping_min_delta_must_be_beaten():
    "Issue 20.19: min_delta applied with the wrong sign survived (no test used min_delta > 0)"
    stopper = EarlyStopping(patience=2, min_delta=0.1, restore_best=False)
    assert _feed(stopper, [1.0, 0.95, 0.92, 0.5]) == 3     # 0.95 and 0.92 are not better by more than 0.1
    assert stopper.best_value == 1.0 and stopper.best_epoch == 1
    stopper = EarlyStopping(patience=2, min_delta=0.1, restore_best=False)
    assert _feed(stopper, [1.0, 0.85, 0.8, 0.74, 0.7]) is None   # 0.85 beats 1.0 by 0.15, 0.74 beats 0.85 by 0.11
    assert (stopper.best_value, stopper.best_epoch) == (0.74, 4)
    acc = EarlyStopping(patience=2, monitor='val_accuracy', min_delta=0.05, restore_best=False)
    assert _feed(acc, [0.5, 0.54, 0.53, 0.9]) == 3         # higher is better, and must be better by more than 0.05
    assert (acc.best_value, acc.best_epoch) == (0.5, 1)


def test_early_stopping_val_accuracy_is_higher_is_better():
    "Issue 20.19: the direction of a val_accuracy monitor was caught only by a notebook"
    stopper = EarlyStopping(patience=2, monitor='val_accuracy', restore_best=False)
    assert _feed(stopper, [0.6, 0.8, 0.7, 0.75, 0.9]) == 4
    assert (stopper.best_value, stopper.best_epoch) == (0.8, 2)
    x, y = make_spirals(100, rng=0); xv, yv = make_spirals(50, rng=1)
    model = Model(Net([Dense(2, 32, rng=0), BatchNorm1d(32), ReLU(), Dense(32, 3, rng=1)]), SoftmaxCrossEntropy(), Adam(0.05))
    stopper = EarlyStopping(patience=3, monitor='val_accuracy')
    h = model.fit(x, y, 60, batch_size=32, validation_data=(xv, yv), progress=False, verbose=False, callbacks=[stopper])
    assert stopper.best_value == max(h['val_accuracy']) > h['val_accuracy'][0]
    assert stopper.best_epoch == 1 + h['val_accuracy'].index(max(h['val_accuracy']))   # the first epoch that reached it
    assert model.evaluate(xv, yv)['accuracy'] == stopper.best_value                     # and its weights are back


def test_early_stopping_reused_across_two_fits():
    "Issue 20.19: on_train_begin not resetting best_value survived (no test reused one EarlyStopping)"
    x, y = make_spirals(100, rng=0); xv, yv = make_spirals(50, rng=1)
    stopper = EarlyStopping(patience=3)
    first = Model(Net([Dense(2, 64, rng=0), ReLU(), Dense(64, 3, rng=1)]), SoftmaxCrossEntropy(), Adam(0.05))
    h1 = first.fit(x, y, 100, batch_size=32, validation_data=(xv, yv), progress=False, verbose=False, callbacks=[stopper])
    second = Model(Net([Dense(2, 3, rng=2)]), SoftmaxCrossEntropy(), Adam(0.01))   # a worse model: its losses stay above
    h2 = second.fit(x, y, 8, batch_size=32, validation_data=(xv, yv), progress=False, verbose=False, callbacks=[stopper])
    assert min(h2['val_loss']) > min(h1['val_loss'])
    assert stopper.best_value == min(h2['val_loss']) and 1 <= stopper.best_epoch <= h2.epochs
    assert second.evaluate(xv, yv)['loss'] == stopper.best_value   # the second model's own best weights


@pytest.mark.parametrize('make', [lambda d: BatchNorm1d(3, dtype=d), lambda d: BatchNorm2d(3, dtype=d), lambda d: LayerNorm(3, dtype=d)],
                         ids=['BatchNorm1d', 'BatchNorm2d', 'LayerNorm'])
@pytest.mark.parametrize('dtype', [np.int32, 'foo', bool, 'int64'], ids=str)
def test_norm_layers_refuse_a_non_float_dtype(make, dtype):
    "Issue 20.12: dtype=np.int32 truncated the running mean to zeros; dtype='foo' was a raw TypeError"
    with pytest.raises(ValueError, match='expected dtype to be a floating-point dtype'): make(dtype)


def test_norm_layers_accept_float_dtypes():
    for d in (np.float16, np.float64, 'float32'):
        for layer in (BatchNorm1d(3, dtype=d), LayerNorm(3, dtype=d)):
            assert layer.params['gamma'].dtype == np.dtype(d)
    assert BatchNorm1d(3, dtype=np.float64).running_mean.dtype == np.float64


@pytest.mark.parametrize('shape', [3.0, None, '3', (3, 2.0), True, [], 0, (2, -1)], ids=repr)
def test_layernorm_refuses_a_bad_normalized_shape(shape):
    "Issue 20.12: LayerNorm(3.0) and LayerNorm(None) were raw TypeErrors"
    with pytest.raises(ValueError, match=r'LayerNorm expected normalized_shape to be a positive int or a tuple of them'):
        LayerNorm(shape)


@pytest.mark.parametrize('p', [0.99999, 0.9999999])
def test_dropout_float16_with_p_near_one(p):
    "Issue 20.12: 1/(1-p) overflows float16 and every kept value became inf, every dropped one NaN"
    x = np.ones((100, 10), np.float16)
    with pytest.raises(ValueError, match=r'Dropout\(p=0\.9+\) cannot scale float16 input by 1/\(1-p\)'):
        Dropout(p, rng=0)(x)
    y = Dropout(0.99, rng=0)(x)                 # 1/(1-p) = 100 fits float16: fine
    assert y.dtype == np.float16 and np.isfinite(y).all()
    assert np.isfinite(Dropout(p, rng=0)(x.astype(np.float32))).all()


def test_dropout_matches_pytorch_with_the_same_mask():
    "p = 0.5 in training: PyTorch's own mask passed in gives the same outputs and gradients (the 1/(1-p) scaling)"
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(0)
    for p in (0.2, 0.5, 0.9):
        x, g = rng.normal(size=(64, 32)), rng.normal(size=(64, 32))
        xt = torch.from_numpy(x).requires_grad_(True)
        yt = torch.nn.Dropout(p)(xt); yt.backward(torch.from_numpy(g))
        keep = yt.detach().numpy() != 0

        class Given(Dropout):
            def forward(self, x):
                self.rng = type('R', (), {'random': lambda _, shape: np.where(keep, 1.0, 0.0)})()   # PyTorch's mask
                return super().forward(x)
        ours = Given(p)
        np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=1e-15, atol=0)
        np.testing.assert_allclose(ours.backward(g), xt.grad.numpy(), rtol=1e-15, atol=0)
