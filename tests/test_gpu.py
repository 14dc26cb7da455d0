"""Chapter 10 (backend) and the device support of chapters 0-9, from the outside.

Every test not marked `gpu` runs on any machine: it uses the stand-in device (numpy arrays that refuse to mix with plain
ones, as CuPy's do) and the fused kernels' numpy twins. The tests marked `gpu` need CuPy and an NVIDIA GPU and skip
without them; `pytest -m gpu` runs only those."""
import importlib.util, subprocess, sys, types
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinynn_book import tensor
from tinynn_book.tensor import array_module, device_of, get_device, kernel_for, to_device, to_numpy
from tinynn_book.layers import Dense, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from tinynn_book.losses import MSE, MAE, Huber, SigmoidCrossEntropy, SoftmaxCrossEntropy, one_hot
from tinynn_book.conv import AvgPool2D, Conv2D, Flatten, MaxPool2D, col2im, im2col
from tinynn_book.optim import SGD, Adam, AdamW, RMSProp
from tinynn_book.model import Model, Net
from tinynn_book.regularization import BatchNorm1d, BatchNorm2d, Dropout, LayerNorm
from tinynn_book.mnist import RandomShift, load_mnist, make_model
from tinynn_book.cnn import FastBatchNorm2d, GlobalAvgPool2D, residual_block
from tinynn_book.backend import (CUDA_SOURCE, KERNEL_NAMES, StandInArray, adam_elementwise, col2im_gather, fused_adam,
                                 gpu_kernels, im2col_gather, standin_device, twin_kernels, wide_cnn)
from tinynn_book.cli import main


@pytest.fixture
def standin():
    "The stand-in device without fused kernels (and reset afterwards)"
    standin_device()
    yield 'standin'
    standin_device()


@pytest.fixture(scope='module')
def sample():
    (x, y), (x_test, y_test) = load_mnist(sample=True)
    return x[:256], y[:256], x_test[:200], y_test[:200]


def _same(a, b, tol):
    a, b = to_numpy(a), to_numpy(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    if tol == 0: assert np.array_equal(a, b)
    else: np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# --- chapter 0's helpers -------------------------------------------------------------------------------------------

def test_cpu_is_numpy():
    x = np.ones(3, np.float32)
    assert device_of(x) == 'cpu' and array_module(x) is np and to_device(x, 'cpu') is x
    assert device_of(2.0) == device_of([1, 2]) == device_of(np.float32(1)) == 'cpu'
    assert kernel_for(x, 'im2col') is None and kernel_for(x, 'adam') is None
    assert type(to_numpy([1, 2])) is np.ndarray


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"): get_device('tpu')
    with pytest.raises(ValueError, match="unknown device"): Dense(2, 3).to('cuda')


@pytest.fixture
def no_gpu_registered(monkeypatch):
    monkeypatch.delitem(tensor._devices, 'gpu', raising=False)


def test_gpu_without_cupy_says_so(monkeypatch, no_gpu_registered):
    monkeypatch.setitem(sys.modules, 'cupy', None)   # import cupy raises ImportError
    with pytest.raises(RuntimeError, match=r"needs CuPy, which is not installed: pip install -e '\.\[gpu\]'"):
        to_device(np.ones(2), 'gpu')
    assert 'gpu' not in tensor._devices


def test_gpu_without_a_gpu_says_so(monkeypatch, no_gpu_registered):
    def no_device(): raise RuntimeError('cudaErrorNoDevice: no CUDA-capable device is detected')
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device)))
    monkeypatch.setitem(sys.modules, 'cupy', fake)
    with pytest.raises(RuntimeError, match="CuPy is installed but finds no usable NVIDIA GPU .*no CUDA-capable device"):
        get_device('gpu')


def test_cli_device_gpu_fails_before_loading_data(monkeypatch, capsys, no_gpu_registered):
    monkeypatch.setitem(sys.modules, 'cupy', None)
    monkeypatch.setattr('tinynn_book.cli.load_mnist', lambda *a, **k: pytest.fail('data loaded before the device check'))
    with pytest.raises(SystemExit) as e: main(['--device', 'gpu', '--sample'])
    assert e.value.code == 2
    assert "argument --device: device 'gpu' needs CuPy" in capsys.readouterr().err


def test_cli_device_choices(capsys):
    with pytest.raises(SystemExit): main(['--device', 'tpu'])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_cli_trains_on_the_standin_device(monkeypatch, capsys, tmp_path, standin):
    # the command's --device choices are cpu and gpu; here its gpu is the stand-in, to run the whole path on a CPU
    monkeypatch.setattr('tinynn_book.cli.get_device', lambda name: None)
    real_make_model = make_model
    def on_standin(*args, **kwargs):
        model = real_make_model(*args, **kwargs)
        model.to = lambda device, to=model.to: to('standin' if device == 'gpu' else device)
        return model
    monkeypatch.setattr('tinynn_book.cli.make_model', on_standin)
    assert main(['--device', 'gpu', '--sample', '--epochs', '1', '--no-progress', '--save', str(tmp_path/'m.npz')]) == 0
    out = capsys.readouterr().out
    assert 'on the gpu' in out and 'test accuracy:' in out
    assert Model.load(tmp_path/'m.npz').device == 'cpu'


# --- the stand-in device behaves like CuPy's arrays ---------------------------------------------------------------

def test_standin_refuses_to_mix(standin):
    a = to_device(np.arange(6.0).reshape(2, 3), standin)
    assert type(a) is StandInArray and device_of(a) == 'standin' and device_of(np.exp(a)) == 'standin'
    for mix in (lambda: a + np.ones(3), lambda: np.concatenate([a, np.ones((1, 3))]), lambda: a[np.array([0])],
                lambda: a.__setitem__(0, np.zeros(3)), lambda: np.ones(3) * a, lambda: array_module(a).asarray(np.ones(2))):
        with pytest.raises(TypeError, match='Unsupported type'): mix()
    assert a[0, 1] * np.float32(2) == 2.0 and float(a.sum()) == 15.0   # numpy scalars and Python numbers pass, as in CuPy
    host = to_numpy(a); host[0, 0] = 99
    assert type(host) is np.ndarray and a[0, 0] == 0   # a copy, as a transfer is


def test_standin_counts_operations(standin):
    a = to_device(np.ones((4, 4), np.float32), standin)
    StandInArray.ops = 0
    b = a @ a; b += 1; a[:2]                       # a slice is a view: no operation
    assert StandInArray.ops == 2


def test_a_training_step_waits_for_the_device_three_times(sample, standin):
    "Each sync stalls a GPU: the loss value and one label check each for the loss and its gradient; fit adds the accuracy"
    x, y = sample[0][:128], sample[1][:128]
    model = make_model('lenet', seed=0).to(standin)
    model.train_step(x, y)
    StandInArray.syncs = 0
    for _ in range(3): model.train_step(x, y)
    assert StandInArray.syncs == 9
    reduced = to_device(np.arange(6.0), standin).sum()
    assert type(reduced) is StandInArray and reduced.ndim == 0   # a reduction stays on the device, as in CuPy
    StandInArray.syncs = 0
    assert float(reduced) == 15.0 and StandInArray.syncs == 1


# --- every layer and loss on a second device ---------------------------------------------------------------------

LAYERS = {  # name: (factory, input shape)
    'Dense': (lambda: Dense(6, 4, rng=0), (5, 6)), 'ReLU': (ReLU, (5, 6)), 'LeakyReLU': (lambda: LeakyReLU(0.1), (5, 6)),
    'Sigmoid': (Sigmoid, (5, 6)), 'Tanh': (Tanh, (5, 6)), 'Softplus': (Softplus, (5, 6)),
    'Conv2D': (lambda: Conv2D(3, 4, 3, stride=2, padding=1, rng=0), (2, 3, 9, 8)),
    'Conv2D 5x5': (lambda: Conv2D(2, 3, 5, padding=2, rng=0), (2, 2, 7, 7)),
    'MaxPool2D': (lambda: MaxPool2D(2), (2, 3, 6, 6)), 'MaxPool2D 3/2 pad': (lambda: MaxPool2D(3, 2, 1), (2, 3, 7, 7)),
    'AvgPool2D': (lambda: AvgPool2D(3, 2, 1), (2, 3, 7, 7)), 'Flatten': (Flatten, (2, 3, 4, 4)),
    'Dropout': (lambda: Dropout(0.3, rng=1), (5, 6)), 'BatchNorm1d': (lambda: BatchNorm1d(6), (5, 6)),
    'BatchNorm2d': (lambda: BatchNorm2d(3), (4, 3, 5, 5)), 'FastBatchNorm2d': (lambda: FastBatchNorm2d(3), (4, 3, 5, 5)),
    'LayerNorm': (lambda: LayerNorm(6), (5, 6)), 'GlobalAvgPool2D': (GlobalAvgPool2D, (2, 3, 4, 5)),
    'residual_block': (lambda: residual_block(3, 4, stride=2, rng=0), (2, 3, 8, 8)),
    'RandomShift': (lambda: RandomShift(2, rng=3), (2, 1, 6, 6)),
}

def check_layer_on(device, factory, shape, tol, training=True):
    "The layer on `device` against the same layer on the CPU: output, and in training mode gradients and state"
    rng = np.random.default_rng(0)
    x, cpu, dev = rng.normal(size=shape).astype(np.float32), factory(), factory().to(device)
    net_cpu, net_dev = Net([cpu]).train(training), Net([dev]).train(training)
    y = net_cpu.forward(x); y_dev = net_dev.forward(to_device(x, device))
    assert device_of(y_dev) == device
    _same(y_dev, y, tol)
    if not training: return   # evaluation mode is forward only (Conv2D keeps no columns for a backward pass)
    grad = rng.normal(size=y.shape).astype(np.float32)
    _same(net_dev.backward(to_device(grad, device)), net_cpu.backward(grad), tol)
    for k, g in net_cpu.grads.items(): _same(net_dev.grads[k], g, tol)
    for k, s in net_cpu.state.items(): _same(net_dev.state[k], s, tol)

@pytest.mark.parametrize('name', LAYERS)
def test_every_layer_on_the_standin_device(name, standin):
    check_layer_on(standin, *LAYERS[name], tol=0)
    check_layer_on(standin, *LAYERS[name], tol=0, training=False)

@pytest.mark.parametrize('name', ['Conv2D', 'Conv2D 5x5', 'residual_block'])
def test_layers_through_the_fused_twins(name):
    standin_device(twin_kernels())
    try: check_layer_on('standin', *LAYERS[name], tol=1e-5)
    finally: standin_device()

LOSSES = [(SoftmaxCrossEntropy, lambda r: r.integers(0, 4, 5)), (SoftmaxCrossEntropy, lambda r: one_hot(r.integers(0, 4, 5), 4)),
          (MSE, lambda r: r.normal(size=(5, 4)).astype(np.float32)), (MAE, lambda r: r.normal(size=(5, 4)).astype(np.float32)),
          (Huber, lambda r: r.normal(size=(5, 4)).astype(np.float32)), (SigmoidCrossEntropy, lambda r: r.integers(0, 2, (5, 4)).astype(np.float32))]

@pytest.mark.parametrize('loss, target', LOSSES, ids=[f'{l.__name__}-{i}' for i, (l, _) in enumerate(LOSSES)])
def test_every_loss_on_the_standin_device(loss, target, standin):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(5, 4)).astype(np.float32), target(rng)
    p, t = to_device(pred, standin), to_device(target, standin)
    assert loss().loss(p, t) == loss().loss(pred, target)
    _same(loss().grad(p, t), loss().grad(pred, target), 0)
    with pytest.raises(TypeError, match='a prediction on the standin and a target on the cpu'): loss().loss(p, target)


# --- whole models: moves, training, checkpoints --------------------------------------------------------------------

@pytest.mark.parametrize('name, options', [('mlp', {}), ('lenet', {}), ('resnet', {}),
                                           ('mlp', dict(norm=BatchNorm1d, dropout='yes')), ('lenet', dict(norm2d=BatchNorm2d))])
def test_training_on_the_standin_device_is_bit_identical(name, options, sample, standin):
    x, y, x_test, y_test = sample
    def build():
        opts = dict(options)
        if opts.get('dropout'): opts['dropout'] = (lambda rng: lambda: Dropout(0.3, rng=rng))(np.random.default_rng(5))
        return make_model(name, seed=0, **opts)
    cpu, dev = build(), build().to(standin)
    for p, q in zip(cpu.net.params.values(), dev.net.params.values()):   # same seed, same weights: drawn on the CPU
        assert device_of(q) == 'standin' and np.array_equal(p, to_numpy(q))
    h_cpu = cpu.fit(x[:128], y[:128], 1, 32, validation_data=(x_test, y_test), progress=False, verbose=False)
    h_dev = dev.fit(x[:128], y[:128], 1, 32, validation_data=(x_test, y_test), progress=False, verbose=False)
    assert [h_cpu[k] for k in ('loss', 'accuracy', 'val_loss', 'val_accuracy')] == [h_dev[k] for k in ('loss', 'accuracy', 'val_loss', 'val_accuracy')]
    assert all(type(v) is float for v in h_dev['loss'] + h_dev['val_accuracy'])
    for k, p in cpu.net.params.items(): _same(dev.net.params[k], p, 0)
    for k, s in cpu.net.state.items(): _same(dev.net.state[k], s, 0)
    out = dev.predict(x_test)
    assert type(out) is np.ndarray and np.array_equal(out, cpu.predict(x_test))
    assert dev.evaluate(x_test, y_test) == cpu.evaluate(x_test, y_test)


@pytest.mark.parametrize('optimizer', [lambda: Adam(1e-3), lambda: AdamW(1e-3), lambda: SGD(0.1, momentum=0.9), lambda: RMSProp(1e-3, momentum=0.5)])
def test_model_to_moves_optimizer_state_and_back(optimizer, sample, standin):
    x, y = sample[0][:64].reshape(64, -1) / 255, sample[1][:64]
    build = lambda: Model(Net([Dense(784, 16, rng=0), ReLU(), Dense(16, 10, rng=1)]), SoftmaxCrossEntropy(), optimizer())
    a, b = build(), build()
    for i in range(3): a.train_step(x[i::3], y[i::3]); b.train_step(x[i::3], y[i::3])
    b.to(standin)
    assert b.device == 'standin'
    arrays = [v for s in b.optimizer.state.values() for v in s.values() if hasattr(v, 'shape')]
    assert arrays and all(device_of(v) == 'standin' for v in arrays)
    assert all(device_of(g) == 'standin' for g in b.net.grads.values())
    for i in range(3): a.train_step(x[i::3], y[i::3]); b.train_step(x[i::3], y[i::3])
    b.to('cpu')
    assert all(device_of(v) == 'cpu' for s in b.optimizer.state.values() for v in s.values() if hasattr(v, 'shape'))
    a.train_step(x, y); b.train_step(x, y)
    for k, p in a.net.params.items(): _same(b.net.params[k], p, 0)


def test_mixing_devices_names_the_layer_and_both_devices(sample, standin):
    x = sample[0][:4].astype(np.float32)
    dev = make_model('resnet', seed=0, max_shift=0).to(standin)
    with pytest.raises(TypeError, match=r"Conv2D\(in_channels=1, out_channels=24.*on the standin but got input on the cpu"):
        dev.net.forward(x)
    cpu = make_model('lenet', seed=0, max_shift=0)
    with pytest.raises(TypeError, match=r"Conv2D\(in_channels=1, out_channels=6.*on the cpu but got input on the standin"):
        cpu.net.forward(to_device(x, standin))
    # inside a residual block, the layer named is the one inside the block
    block = dev.net[4]
    with pytest.raises(TypeError, match=r"Conv2D\(in_channels=24, out_channels=24.*on the standin but got input on the cpu"):
        block.forward(np.zeros((2, 24, 14, 14), np.float32))
    # Model's methods move on purpose, from either device's data
    assert dev.predict(x).shape == cpu.predict(to_device(x, standin)).shape == (4, 10)
    assert np.isfinite(dev.train_step(x, sample[1][:4])) and np.isfinite(cpu.train_step(to_device(x, standin), sample[1][:4]))


def test_fit_takes_data_that_is_already_on_the_device(sample, standin):
    x, y = sample[0][:96], sample[1][:96]
    a, b = make_model('mlp', seed=0), make_model('mlp', seed=0).to(standin)
    ha = a.fit(x, y, 1, 32, progress=False, verbose=False)
    hb = b.fit(to_device(x, standin), to_device(y, standin), 1, 32, progress=False, verbose=False)
    assert ha['loss'] == hb['loss']


def test_checkpoints_cross_devices_bit_identically(sample, tmp_path, standin):
    x, y, x_test, _ = sample
    dev = make_model('resnet', seed=0).to(standin)
    dev.fit(x[:64], y[:64], 1, 32, progress=False, verbose=False)
    dev.save(tmp_path/'dev.npz')
    cpu = Model.load(tmp_path/'dev.npz')
    assert cpu.device == 'cpu'
    for k, p in dev.net.params.items(): _same(cpu.net.params[k], p, 0)
    for k, s in dev.net.state.items(): _same(cpu.net.state[k], s, 0)
    assert np.array_equal(cpu.predict(x_test), dev.predict(x_test))
    cpu.save(tmp_path/'cpu.npz')
    back = Model.load(tmp_path/'cpu.npz', device=standin)
    assert back.device == 'standin' and np.array_equal(back.predict(x_test), dev.predict(x_test))
    with np.load(tmp_path/'dev.npz') as f, np.load(tmp_path/'cpu.npz') as g:
        assert sorted(f.files) == sorted(g.files) and all(np.array_equal(f[k], g[k]) for k in f.files)


def test_summary_on_the_standin_device(standin):
    dev = make_model('lenet', seed=0).to(standin)
    assert dev.summary((1, 28, 28)).total_params == make_model('lenet', seed=0).summary((1, 28, 28)).total_params


# --- fused kernels: the twins on the CPU, the CUDA source compiled where NVRTC is installed ---------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), st.integers(1, 4),
       st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.integers(0, 2))
def test_gather_twins_equal_chapter_3(N, C, H, W, kh, kw, sh, sw, ph, pw):
    if H + 2 * ph < kh or W + 2 * pw < kw: return
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, C, H, W)).astype(np.float32)
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw))
    assert np.array_equal(im2col_gather(x, (kh, kw), (sh, sw), (ph, pw)), cols)
    g = rng.normal(size=cols.shape).astype(np.float32)
    np.testing.assert_allclose(col2im_gather(g, x.shape, (kh, kw), (sh, sw), (ph, pw)), col2im(g, x.shape, (kh, kw), (sh, sw), (ph, pw)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cls, wd', [(Adam, 0.0), (Adam, 0.1), (AdamW, 0.05)])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_adam_twin_equals_chapter_4(cls, wd, dtype):
    rng = np.random.default_rng(0)
    readable, fused = cls(1e-2, weight_decay=wd), cls(1e-2, weight_decay=wd)
    p1 = rng.normal(size=(7, 3)).astype(dtype); p2, s1, s2 = p1.copy(), {}, {}
    for _ in range(6):
        g = rng.normal(size=p1.shape).astype(dtype)
        readable.update(p1, g, s1); fused_adam(adam_elementwise)(fused, p2, g, s2)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(p2, p1, rtol=tol, atol=tol); np.testing.assert_allclose(s2['m'], s1['m'], rtol=tol, atol=tol)
    assert p2.dtype == dtype and s2['t'] == 6


def test_the_fused_path_trains_like_the_numpy_path(sample):
    x, y = sample[0][:128], sample[1][:128]
    cpu = make_model('lenet', seed=0)
    standin_device(twin_kernels())
    try:
        dev = make_model('lenet', seed=0).to('standin')
        assert kernel_for(dev.net[1].params['w'], 'im2col') is not None
        h_dev = dev.fit(x, y, 1, 32, progress=False, verbose=False)
    finally: standin_device()
    h_cpu = cpu.fit(x, y, 1, 32, progress=False, verbose=False)
    np.testing.assert_allclose(h_dev['loss'], h_cpu['loss'], rtol=1e-4)
    for k, p in cpu.net.params.items(): np.testing.assert_allclose(to_numpy(dev.net.params[k]), p, rtol=1e-3, atol=1e-5)


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return nvrtc
    except Exception: return None

@pytest.mark.skipif(_nvrtc() is None, reason="needs CuPy and NVIDIA's runtime compiler (NVRTC); no GPU needed")
def test_cuda_source_compiles():
    nvrtc = _nvrtc()
    program = nvrtc.createProgram(CUDA_SOURCE, 'tinynn.cu', [], [])
    for name in KERNEL_NAMES: nvrtc.addNameExpression(program, name)
    try: nvrtc.compileProgram(program, ['-arch=compute_70', '--std=c++14'])
    except Exception: pytest.fail(nvrtc.getProgramLog(program))
    assert all(nvrtc.getLoweredName(program, name) for name in KERNEL_NAMES)


def test_library_never_imports_cupy_on_the_cpu_path():
    code = ("import sys; import tinynn_book.cli, tinynn_book.backend; from tinynn_book.mnist import make_model; "
            "make_model('lenet').fit(*[__import__('numpy').zeros((8, 1, 28, 28), 'float32'), [0] * 8], 1, progress=False, verbose=False); "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, '-c', code], check=True)


# --- on a real GPU (pytest -m gpu) ----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def gpu():
    try: get_device('gpu')
    except RuntimeError as e: pytest.skip(str(e))
    import cupy
    return cupy

@pytest.mark.gpu
@pytest.mark.parametrize('dtype, tol', [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_gpu_kernels_equal_their_twins(gpu, dtype, tol):
    kernels, rng = gpu_kernels(), np.random.default_rng(0)
    for shape, k, s, p in [((2, 3, 7, 6), (3, 3), (1, 1), (1, 1)), ((3, 4, 9, 7), (3, 2), (2, 1), (1, 0)), ((64, 32, 14, 14), (3, 3), (1, 1), (1, 1))]:
        x = rng.normal(size=shape).astype(dtype)
        cols = kernels['im2col'](gpu.asarray(x), k, s, p)
        assert cols.dtype == dtype and np.array_equal(cols.get(), im2col_gather(x, k, s, p))
        g = rng.normal(size=cols.shape).astype(dtype)
        np.testing.assert_allclose(kernels['col2im'](gpu.asarray(g), shape, k, s, p).get(), col2im_gather(g, shape, k, s, p), rtol=tol, atol=tol)
    opt, p_cpu, state_cpu, state_gpu = AdamW(1e-2), rng.normal(size=(300, 7)).astype(dtype), {}, {}
    p_gpu = gpu.asarray(p_cpu)
    for _ in range(5):
        g = rng.normal(size=p_cpu.shape).astype(dtype)
        fused_adam(adam_elementwise)(opt, p_cpu, g, state_cpu); kernels['adam'](opt, p_gpu, gpu.asarray(g), state_gpu)
    np.testing.assert_allclose(p_gpu.get(), p_cpu, rtol=10 * tol, atol=10 * tol)

@pytest.mark.gpu
@pytest.mark.parametrize('name', LAYERS)
def test_gpu_every_layer_equals_numpy(name, gpu):
    check_layer_on('gpu', *LAYERS[name], tol=2e-4)
    check_layer_on('gpu', *LAYERS[name], tol=2e-4, training=False)

@pytest.mark.gpu
@pytest.mark.parametrize('loss, target', LOSSES, ids=[f'{l.__name__}-{i}' for i, (l, _) in enumerate(LOSSES)])
def test_gpu_every_loss_equals_numpy(loss, target, gpu):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(5, 4)).astype(np.float32), target(rng)
    assert abs(loss().loss(to_device(pred, 'gpu'), to_device(target, 'gpu')) - loss().loss(pred, target)) < 1e-5
    _same(loss().grad(to_device(pred, 'gpu'), to_device(target, 'gpu')), loss().grad(pred, target), 1e-5)

@pytest.mark.gpu
@pytest.mark.parametrize('name', ['mlp', 'lenet', 'resnet'])
def test_gpu_training_on_the_sample_matches_the_cpu(name, gpu):
    (x, y), (x_test, y_test) = load_mnist(sample=True)
    cpu, dev = make_model(name, seed=0), make_model(name, seed=0).to('gpu')
    for p, q in zip(cpu.net.params.values(), dev.net.params.values()): assert np.array_equal(p, q.get())   # same seed, same start
    cpu.fit(x, y, 2, 128, progress=False, verbose=False); dev.fit(x, y, 2, 128, progress=False, verbose=False)
    acc_cpu, acc_gpu = cpu.evaluate(x_test, y_test)['accuracy'], dev.evaluate(x_test, y_test)['accuracy']
    assert acc_gpu > 0.85 and abs(acc_gpu - acc_cpu) < 0.02, (acc_cpu, acc_gpu)

@pytest.mark.gpu
def test_gpu_checkpoints_cross_devices(gpu, tmp_path):
    (x, y), (x_test, _) = load_mnist(sample=True)
    dev = make_model('lenet', seed=0).to('gpu')
    dev.fit(x[:512], y[:512], 1, 128, progress=False, verbose=False)
    dev.save(tmp_path/'gpu.npz')
    cpu = Model.load(tmp_path/'gpu.npz')
    for k, p in dev.net.params.items(): assert np.array_equal(cpu.net.params[k], p.get())
    back = Model.load(tmp_path/'gpu.npz', device='gpu')
    for k, p in dev.net.params.items(): assert np.array_equal(back.net.params[k].get(), p.get())
    assert np.array_equal(back.predict(x_test), dev.predict(x_test))
    np.testing.assert_allclose(cpu.predict(x_test), dev.predict(x_test), rtol=1e-3, atol=1e-3)

@pytest.mark.gpu
def test_gpu_mixing_is_refused(gpu):
    dev = make_model('lenet', seed=0, max_shift=0).to('gpu')
    with pytest.raises(TypeError, match='on the gpu but got input on the cpu'): dev.net.forward(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(TypeError, match='on the cpu but got input on the gpu'):
        make_model('lenet', seed=0, max_shift=0).net.forward(gpu.zeros((2, 1, 28, 28), np.float32))


def test_bench_gpu_runs_on_the_standin_device():
    "The GPU benchmark's whole flow, on a CPU: the table it prints, from the stand-in device with the twin kernels"
    from pathlib import Path
    bench = Path(__file__).resolve().parent.parent/'bench'/'bench_gpu.py'
    out = subprocess.run([sys.executable, str(bench), '--device', 'standin', '--models', 'mlp,wide', '--batches', '8',
                          '--steps', '2', '--repeats', '1'], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'mlp    batch     8: ours fused' in out.stdout and 'wide   batch     8' in out.stdout


@pytest.mark.skipif(importlib.util.find_spec('cupy') is None, reason="needs CuPy installed (a GPU is not needed)")
@pytest.mark.parametrize('name, options', [('mlp', {}), ('lenet', {}), ('resnet', {}),
                                           ('mlp', dict(norm=BatchNorm1d, dropout=lambda: Dropout(0.2, rng=0))), ('lenet', dict(norm2d=BatchNorm2d))])
def test_every_numpy_call_on_device_arrays_has_a_cupy_version(name, options, sample, monkeypatch, standin):
    "numpy hands a call on CuPy arrays to CuPy by name (NEPs 13 and 18): every call a training run makes must exist there"
    import functools, cupy
    calls = set()
    real_ufunc, real_function = StandInArray.__array_ufunc__, StandInArray.__array_function__
    def ufunc(self, uf, method, *inputs, **kwargs):
        calls.add(('ufunc', uf.__name__, method)); return real_ufunc(self, uf, method, *inputs, **kwargs)
    def function(self, func, types, args, kwargs):
        calls.add(('function', func.__module__, func.__name__)); return real_function(self, func, types, args, kwargs)
    monkeypatch.setattr(StandInArray, '__array_ufunc__', ufunc)
    monkeypatch.setattr(StandInArray, '__array_function__', function)
    x, y, x_test, y_test = sample
    model = make_model(name, seed=0, **options).to(standin)
    model.fit(x[:64], y[:64], 1, 32, validation_data=(x_test[:32], y_test[:32]), progress=False, verbose=False)
    missing = []
    for kind, where, what in sorted(calls):
        try:   # how cupy.ndarray.__array_ufunc__ / __array_function__ find their implementation
            if kind == 'ufunc': getattr(cupy, where) if what == '__call__' else getattr(getattr(cupy, where), what)
            else: functools.reduce(getattr, where.split('.')[1:] + [what], cupy)
        except AttributeError: missing.append((kind, where, what))
    assert len(calls) > 20 and not missing, missing
