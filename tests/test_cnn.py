"The installed package from the outside: chapter 09 (cnn): GlobalAvgPool2D, Residual, residual_block, resnet, FastBatchNorm2d."
import subprocess, sys
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinynn_book.layers import Dense, ReLU, check_layer_grads
from tinynn_book.conv import AvgPool2D, Conv2D, Flatten, MaxPool2D
from tinynn_book.losses import SoftmaxCrossEntropy
from tinynn_book.optim import Adam
from tinynn_book.model import Model, Net
from tinynn_book.regularization import BatchNorm2d
from tinynn_book.mnist import MODELS, load_mnist, make_model, train_mnist
from tinynn_book.cnn import (FastBatchNorm2d, GlobalAvgPool2D, Residual, profile_layers, receptive_field, residual_block,
                             resnet, vgg_block)


def _randomise(net, seed=1):
    rng = np.random.default_rng(seed)
    for k, p in net.params.items():
        if k.endswith('gamma'): p[...] = rng.uniform(0.5, 2.0, p.shape)
        if k.endswith('beta'): p[...] = rng.normal(size=p.shape)
    return net


def _plain_or_residual(depth, residual, width=8, seed=0):
    "A stride-2 stem, then depth - 2 conv-BN-ReLU layers (paired into identity residual blocks if residual), mean, Dense"
    rng = np.random.default_rng(seed)
    cbr = lambda c_in, s=1: [Conv2D(c_in, width, 3, s, 1, rng=rng), FastBatchNorm2d(width), ReLU()]
    layers = cbr(1, 2)
    for _ in range((depth - 2) // 2):
        pair = cbr(width) + cbr(width)
        layers += [Residual(Net(pair[:5])), ReLU()] if residual else pair
    return Net(layers + [GlobalAvgPool2D(), Dense(width, 10, rng=rng)])


def _conv_grad_norms(net, x, y):
    loss = SoftmaxCrossEntropy()
    net.backward(loss.grad(net.forward(x), y))
    return np.array([np.linalg.norm(g) for g in net.grads.values() if g.ndim == 4])


# ---------------------------------------------------------------- gradients (float64, central differences)
def test_global_avg_pool_gradient_and_values():
    x = np.random.default_rng(0).normal(size=(3, 4, 5, 6))
    assert check_layer_grads(GlobalAvgPool2D(), x)['x'] < 1e-8
    np.testing.assert_allclose(GlobalAvgPool2D()(x), AvgPool2D((5, 6))(x)[:, :, 0, 0], atol=1e-12)
    assert GlobalAvgPool2D()(x.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize('stride, c_out', [(1, 3), (2, 5)])
def test_residual_block_gradients(stride, c_out):
    block = _randomise(residual_block(3, c_out, stride, rng=0))
    errors = check_layer_grads(block, np.random.default_rng(2).normal(size=(4, 3, 6, 6)))
    biases = [k for k in errors if k.endswith('.b')]  # cancelled by the BatchNorm after them: gradient exactly 0
    assert all(np.abs(block.grads[k]).max() < 1e-12 for k in biases)
    assert max(e for k, e in errors.items() if k not in biases) < 1e-6, errors


def test_residual_without_norm_gradient():
    res = Residual(Net([Conv2D(2, 4, 3, 2, 1, rng=0), ReLU(), Conv2D(4, 4, 3, 1, 1, rng=1)]), Conv2D(2, 4, 1, 2, rng=2))
    errors = check_layer_grads(res, np.random.default_rng(0).normal(size=(2, 2, 5, 5)))
    assert set(errors) == {'x', '0.0.w', '0.0.b', '0.2.w', '0.2.b', '1.w', '1.b'} and max(errors.values()) < 1e-6, errors


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 4), h=st.integers(1, 5), w=st.integers(1, 5), seed=st.integers(0, 2**16),
       training=st.booleans())
def test_fast_batchnorm_equals_chapter7_batchnorm(n, c, h, w, seed, training):
    "FastBatchNorm2d against its reference, chapter 7's BatchNorm2d, in float64 on random shapes and values"
    if training and n * h * w < 2: return  # batch statistics need two values per channel (both layers refuse)
    rng = np.random.default_rng(seed)
    x, g = rng.normal(rng.normal(), rng.uniform(0.1, 3), size=(n, c, h, w)), rng.normal(size=(n, c, h, w))
    ref, fast = (_randomise(Net([cls(c).astype(np.float64)]), seed) for cls in (BatchNorm2d, FastBatchNorm2d))
    if not training:  # one training step first, so the running statistics are not the initial ones
        warm = rng.normal(size=(2, c, 2, 2))
        for net in (ref, fast): net(warm); net.eval()
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fast.backward(g), ref.backward(g), rtol=1e-9, atol=1e-9)
    for k in ref.grads: np.testing.assert_allclose(fast.grads[k], ref.grads[k], rtol=1e-9, atol=1e-9)
    for k in ref.state: np.testing.assert_allclose(fast.state[k], ref.state[k], rtol=1e-12, atol=1e-12)


def test_fast_batchnorm_keeps_float32():
    bn = FastBatchNorm2d(3)
    y = bn(np.random.default_rng(0).normal(size=(4, 3, 5, 5)).astype(np.float32))
    assert y.dtype == np.float32 and bn.backward(np.ones_like(y)).dtype == np.float32


# ---------------------------------------------------------------- the claim of the chapter: gradients reach the first layer
def test_deep_residual_stack_gradient_reaches_the_first_layer():
    (x, y), _ = load_mnist(sample=True)
    plain = _conv_grad_norms(_plain_or_residual(40, residual=False), x[:64], y[:64])
    res = _conv_grad_norms(_plain_or_residual(40, residual=True), x[:64], y[:64])
    assert len(plain) == len(res) == 39
    # residual: the second convolution (the first inside a block) gets a gradient within 10× of the last one's
    assert 0.1 < res[1] / res[-1] < 10, res
    assert res.max() / res.min() < 30, res
    # plain: the gradients of the same layers are orders of magnitude apart
    assert plain.max() / plain.min() > 100, plain


# ---------------------------------------------------------------- PyTorch parity (float64); skipped without torch
def test_global_avg_pool_parity_with_pytorch():
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(3, 4, 5, 6)), rng.normal(size=(3, 4))
    ours = GlobalAvgPool2D()
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.nn.AdaptiveAvgPool2d(1)(xt).flatten(1)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(ours(x), yt.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(ours.backward(g), xt.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize('stride, c_in, c_out', [(1, 4, 4), (2, 4, 6)])
def test_residual_block_parity_with_pytorch(stride, c_in, c_out):
    "The basic block, BatchNorm in training mode, against the same block in PyTorch: output, input and weight gradients"
    torch = pytest.importorskip('torch')
    nn, rng = torch.nn, np.random.default_rng(0)
    ours = _randomise(residual_block(c_in, c_out, stride, rng=0).astype(np.float64))

    def conv(layer):
        c = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding).double()
        c.weight.data.copy_(torch.from_numpy(layer.params['w'])); c.bias.data.copy_(torch.from_numpy(layer.params['b']))
        return c
    def bn(layer):
        b = nn.BatchNorm2d(layer.num_features).double()
        b.weight.data.copy_(torch.from_numpy(layer.params['gamma'])); b.bias.data.copy_(torch.from_numpy(layer.params['beta']))
        return b
    f = ours.block.layers
    block = nn.Sequential(conv(f[0]), bn(f[1]), nn.ReLU(), conv(f[3]), bn(f[4]))
    shortcut = nn.Sequential(conv(ours.shortcut.layers[0]), bn(ours.shortcut.layers[1])) if ours.shortcut else nn.Identity()

    x, g = rng.normal(size=(4, c_in, 6, 6)), rng.normal(size=(4, c_out, 6 // stride, 6 // stride))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = block(xt) + shortcut(xt)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(ours(x), yt.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(ours.backward(g), xt.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(ours.grads['0.0.w'], block[0].weight.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(ours.grads['0.4.gamma'], block[4].weight.grad.numpy(), atol=1e-10)
    if ours.shortcut: np.testing.assert_allclose(ours.grads['1.0.w'], shortcut[0].weight.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(ours.block.layers[1].running_var, block[1].running_var.numpy(), atol=1e-12)


# ---------------------------------------------------------------- shapes, errors, builders
def test_shape_errors_name_the_layer():
    with pytest.raises(ValueError, match=r'Residual expected its block and shortcut to give the same shape, got \(2, 5, 6, 6\) '
                                         r'from the block and \(2, 3, 6, 6\) from the identity'):
        Residual(Conv2D(3, 5, 3, padding=1))(np.zeros((2, 3, 6, 6)))
    with pytest.raises(ValueError, match=r'GlobalAvgPool2D\(\) expected input of shape \(N, C, H, W\), got \(3, 4\)'):
        GlobalAvgPool2D()(np.zeros((3, 4)))
    gap = GlobalAvgPool2D(); gap(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r'GlobalAvgPool2D\(\).backward expected input of shape \(2, 3\), got \(2, 4\)'):
        gap.backward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match='FastBatchNorm2d.*expected input of shape \\(N, 4, H, W\\), got \\(2, 3, 5, 5\\)'):
        FastBatchNorm2d(4)(np.zeros((2, 3, 5, 5)))
    with pytest.raises(ValueError, match='needs more than one value per channel'):
        FastBatchNorm2d(3)(np.zeros((1, 3, 1, 1)))


def test_builders_shapes_and_receptive_field():
    assert vgg_block(2, 1, 8, rng=0)(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 8, 14, 14)
    assert receptive_field([Conv2D(1, 1, 3) for _ in range(3)]) == (7, 1)
    net = resnet(rng=0)
    assert net(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)
    assert sum(p.size for p in net.params.values()) == 174_346
    assert all(p.dtype == np.float64 for p in resnet(rng=0, dtype=np.float64).params.values())
    assert isinstance(resnet(rng=0, norm=BatchNorm2d).layers[1], BatchNorm2d)
    assert MODELS['resnet'] is resnet


def test_same_seed_same_weights():
    a, b = resnet(rng=3), resnet(rng=3)
    for k in a.params: np.testing.assert_array_equal(a.params[k], b.params[k])


def test_resnet_save_load_round_trip(tmp_path):
    (x, y), _ = load_mnist(sample=True)
    model = make_model('resnet', seed=0)
    model.fit(x[:256], y[:256], 1, batch_size=64, progress=False, verbose=False)
    loaded = Model.load(model.save(tmp_path / 'r.npz'))
    for k, p in model.net.params.items(): np.testing.assert_array_equal(loaded.net.params[k], p)
    for k, s in model.net.state.items(): np.testing.assert_array_equal(loaded.net.state[k], s)
    np.testing.assert_array_equal(loaded.predict(x[-64:]), model.predict(x[-64:]))
    assert [type(l).__name__ for l in loaded.net.layers] == [type(l).__name__ for l in model.net.layers]


def test_first_residual_block_skips_both_input_gradients():
    (x, y), _ = load_mnist(sample=True)
    model = Model(Net([residual_block(1, 4, rng=0), GlobalAvgPool2D(), Dense(4, 10, rng=0)]), SoftmaxCrossEntropy(), Adam())
    model.train_step(x[:8], y[:8])
    first = model.net.layers[0]
    assert not first.needs_input_grad and not first.block.needs_input_grad and not first.shortcut.needs_input_grad


def test_profile_layers_restores_the_methods():
    (x, y), _ = load_mnist(sample=True)
    model = make_model('resnet', seed=0)
    profile = profile_layers(model, x[:32], y[:32], steps=1)
    assert ('Conv2D', 'forward') in profile and ('FastBatchNorm2d', 'backward') in profile and ('other', '') in profile
    conv = model.net.layers[1]
    assert 'forward' not in vars(conv) and 'backward' not in vars(conv)


def test_receptive_field_with_strides_and_pooling():
    "Equation (1) by hand: 3x3 stride 2 -> (3, 2); 3x3 -> (7, 2); 2x2 pool -> (9, 4); 3x3 -> (17, 4)"
    layers = [Conv2D(1, 1, 3, stride=2), ReLU(), Conv2D(1, 1, 3), MaxPool2D(2), Conv2D(1, 1, 3)]
    assert receptive_field(layers) == (17, 4)
    assert receptive_field(layers[:2]) == (3, 2)


def test_profile_layers_times_only_the_steps_after_the_warm_up(monkeypatch):
    "A fake clock that only the Tick layer advances: 100 in the warm-up step, 1 in each timed step"
    import tinynn_book.cnn as cnn
    clock = [0.0]
    class Tick(ReLU):
        calls = 0
        def forward(self, x):
            clock[0] += 100 if Tick.calls == 0 else 1
            Tick.calls += 1
            return x
        def backward(self, grad): return grad
    monkeypatch.setattr(cnn, 'time', type('FakeTime', (), {'perf_counter': staticmethod(lambda: clock[0])}))
    model = Model(Net([Tick(), Flatten(), Dense(4, 3, rng=0)]), SoftmaxCrossEntropy(), Adam())
    profile = profile_layers(model, np.ones((2, 1, 2, 2), np.float32), np.array([0, 1]), steps=3)
    assert Tick.calls == 4
    assert profile[('Tick', 'forward')] == 1 and profile[('Dense', 'forward')] == 0 and profile[('other', '')] == 0


@pytest.mark.parametrize('steps', [0, -1, 1.5, True])
def test_profile_layers_refuses_bad_steps(steps):
    model = Model(Net([Flatten(), Dense(4, 3, rng=0)]), SoftmaxCrossEntropy(), Adam())
    with pytest.raises(ValueError, match='profile_layers expected steps to be a positive integer'):
        profile_layers(model, np.ones((2, 1, 2, 2), np.float32), np.array([0, 1]), steps=steps)


@pytest.mark.parametrize('build, message', [
    (lambda: vgg_block(0, 1, 2), 'vgg_block expected num_convs to be a positive integer, got 0'),
    (lambda: vgg_block(2, 0, 2), 'vgg_block expected in_channels to be a positive integer, got 0'),
    (lambda: resnet(widths=()), 'resnet expected widths to be a non-empty sequence of channel counts, got ()'),
    (lambda: resnet(widths=5), 'resnet expected widths to be a non-empty sequence of channel counts, got 5'),
    (lambda: resnet(widths=(8, 0)), 'resnet expected every width to be a positive integer, got 0'),
    (lambda: GlobalAvgPool2D()(np.zeros((2, 3, 0, 0))), r'GlobalAvgPool2D\(\) expected feature maps of at least 1×1, got input of shape \(2, 3, 0, 0\)'),
    (lambda: GlobalAvgPool2D()(np.zeros((2, 3, 4, 0))), r'at least 1×1, got input of shape \(2, 3, 4, 0\)'),
])
def test_builders_and_pooling_refuse_degenerate_arguments(build, message):
    with pytest.raises(ValueError, match=message): build()


def test_resnet_trains_on_the_sample():
    (x, y), _ = load_mnist(sample=True)
    model = make_model('resnet', lr=2e-3, seed=0, weight_decay=0.05, max_shift=2)
    history = train_mnist(model, (x[:5500], y[:5500]), epochs=2, val_size=500, progress=False, verbose=False)
    assert history['val_accuracy'][-1] > 0.85, history


def test_earlier_chapters_do_not_import_this_one():
    code = ("import sys, tinynn_book.mnist, tinynn_book.regularization, tinynn_book.autograd; "
            "assert 'tinynn_book.cnn' not in sys.modules, 'a backward import'")
    subprocess.run([sys.executable, '-c', code], check=True)


def test_residuals_nested_too_deep_are_refused_when_built_not_after_training(tmp_path):
    "Issue 20.15: Residual(Net([x])) nested 300-1000 deep trained, but repr and save raised RecursionError"
    from tinynn_book.model import MAX_NESTING
    x, built = Net([Dense(2, 2, rng=0), ReLU()]), 0
    with pytest.raises(ValueError, match=rf'^Residual: layers nested {MAX_NESTING + 1} deep, but a Net nests at most'):
        for _ in range(1000):
            x = Residual(Net([x])); built += 1   # two levels each: the Residual and the Net inside it
    assert built == (MAX_NESTING - 1) // 2
    model = Model(x, SoftmaxCrossEntropy(), Adam())   # the deepest one that was built trains, prints, saves and loads
    model.train_step(np.ones((4, 2), np.float32), np.array([0, 1, 0, 1]))
    loaded = Model.load(model.save(tmp_path / 'residuals.npz'))
    assert repr(loaded.net) == repr(x) and np.array_equal(loaded.predict(np.ones((3, 2))), model.predict(np.ones((3, 2))))
