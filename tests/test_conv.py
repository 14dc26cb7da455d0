"Chapter 03 from the outside: the installed conv module's shapes, values against loop references, errors, dtypes and configs."
import itertools, json
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinynn_book.conv import Conv2D, MaxPool2D, AvgPool2D, Flatten, im2col, col2im, conv_output_size

def pair(v): return (v, v) if isinstance(v, int) else tuple(v)

def out_size(n, k, s, p): return (n + 2*p - k) // s + 1

def conv_loops(x, w, b, stride, padding):
    "Equation (1) of the chapter as plain loops over every output element: the slowest, most literal reference"
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    N, C, H, W = x.shape; F, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((N, F, out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)))
    for n, f, r, c in itertools.product(*map(range, y.shape)):
        y[n, f, r, c] = b[f] + np.sum(w[f] * xp[n, :, r*sh:r*sh + kh, c*sw:c*sw + kw])
    return y

def conv_loops_backward(x, w, grad, stride, padding):
    "dx, dw, db of conv_loops, one output element at a time"
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    F, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for n, f, r, c in itertools.product(*map(range, grad.shape)):
        g = grad[n, f, r, c]
        dw[f] += g * xp[n, :, r*sh:r*sh + kh, c*sw:c*sw + kw]
        dxp[n, :, r*sh:r*sh + kh, c*sw:c*sw + kw] += g * w[f]
    return dxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], dw, grad.sum((0, 2, 3))

KERNELS, STRIDES, PADDINGS = [1, 2, 3, (2, 3), [3, 1]], [1, 2, (1, 2), (3, 1)], [0, 1, (1, 0), (0, 2)]

@pytest.mark.parametrize('k,s,p', list(itertools.product(KERNELS, STRIDES, PADDINGS)))
def test_conv_shapes(k, s, p):
    (kh, kw), (sh, sw), (ph, pw) = pair(k), pair(s), pair(p)
    x = np.zeros((2, 3, 7, 6), np.float32)
    conv = Conv2D(3, 4, k, s, p)
    expected = (2, 4, out_size(7, kh, sh, ph), out_size(6, kw, sw, pw))
    y = conv(x)
    assert y.shape == expected == (2, 4, *conv_output_size((7, 6), k, s, p))
    assert conv.params['w'].shape == (4, 3, kh, kw) and conv.params['b'].shape == (4,)
    assert conv.backward(np.ones(expected, np.float32)).shape == x.shape
    assert conv.grads['w'].shape == (4, 3, kh, kw) and conv.grads['b'].shape == (4,)
    assert im2col(x, k, s, p).shape == (3*kh*kw, 2*expected[2]*expected[3])

@pytest.mark.parametrize('k,s,p', list(itertools.product(KERNELS, [None, 1, (2, 1)], [0, 1])))
def test_pool_shapes(k, s, p):
    (kh, kw), (ph, pw) = pair(k), pair(p)
    if ph > kh // 2 or pw > kw // 2:
        with pytest.raises(ValueError, match='padding at most half'): MaxPool2D(k, s, p)
        return
    (sh, sw) = pair(k if s is None else s)
    expected = (2, 3, out_size(7, kh, sh, ph), out_size(6, kw, sw, pw))
    for layer in [MaxPool2D(k, s, p), AvgPool2D(k, s, p)]:
        x = np.random.default_rng(0).normal(size=(2, 3, 7, 6)).astype(np.float32)
        assert layer(x).shape == expected
        assert layer.backward(np.ones(expected, np.float32)).shape == x.shape

conv_cases = st.tuples(
    st.integers(1, 2), st.integers(1, 3), st.integers(1, 3),        # N, C, F
    st.integers(1, 3), st.integers(1, 3),                           # kh, kw
    st.integers(1, 3), st.integers(1, 3),                           # sh, sw
    st.integers(0, 2), st.integers(0, 2),                           # ph, pw
    st.integers(0, 4), st.integers(0, 4), st.integers(0, 2**31))    # extra height and width, seed

@settings(deadline=None, max_examples=60)
@given(conv_cases)
def test_conv_matches_loops(case):
    N, C, F, kh, kw, sh, sw, ph, pw, dh, dw_, seed = case
    H, W = max(1, kh - 2*ph) + dh, max(1, kw - 2*pw) + dw_         # at least big enough for one window
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, C, H, W))
    conv = Conv2D(C, F, (kh, kw), (sh, sw), (ph, pw), rng=seed, dtype=np.float64)
    conv.params['b'][:] = rng.normal(size=F)
    y = conv(x)
    np.testing.assert_allclose(y, conv_loops(x, conv.params['w'], conv.params['b'], (sh, sw), (ph, pw)), atol=1e-12)
    grad = rng.normal(size=y.shape)
    dx, dw, db = conv_loops_backward(x, conv.params['w'], grad, (sh, sw), (ph, pw))
    np.testing.assert_allclose(conv.backward(grad), dx, atol=1e-12)
    np.testing.assert_allclose(conv.grads['w'], dw, atol=1e-12)
    np.testing.assert_allclose(conv.grads['b'], db, atol=1e-12)

@settings(deadline=None, max_examples=40)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(0, 1), st.integers(0, 3), st.integers(0, 2**31))
def test_col2im_is_the_adjoint_of_im2col(k, s, p, extra, C, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, C + 1, k + extra + 1, k + 2))
    cols = rng.normal(size=im2col(x, k, s, p).shape)
    np.testing.assert_allclose(np.sum(im2col(x, k, s, p) * cols), np.sum(x * col2im(cols, x.shape, k, s, p)), rtol=1e-10)

@settings(deadline=None, max_examples=40)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 1), st.integers(0, 3), st.integers(0, 2**31))
def test_col2im_equals_a_scatter_add(k, s, p, extra, seed):
    "col2im against np.add.at: every column entry added to the pixel it was copied from (pixel numbers through im2col)"
    rng = np.random.default_rng(seed)
    N, C, H, W = 2, 2, k + extra + 1, k + 2
    cols = rng.normal(size=im2col(np.zeros((N, C, H, W)), k, s, p).shape)
    index = im2col(np.arange(N*C*(H + 2*p)*(W + 2*p)).reshape(N, C, H + 2*p, W + 2*p), k, s)
    xp = np.zeros((N, C, H + 2*p, W + 2*p))
    np.add.at(xp.reshape(-1), index, cols)
    np.testing.assert_allclose(col2im(cols, (N, C, H, W), k, s, p), xp[:, :, p:p + H, p:p + W], atol=1e-12)

def test_max_pool_matches_loops_and_ties_go_to_the_first_maximum():
    rng = np.random.default_rng(0)
    x = np.round(np.maximum(rng.normal(size=(2, 3, 6, 7)), 0), 1)   # many ties, as after a ReLU
    pool = MaxPool2D(2, stride=1)                                     # overlapping windows
    y, grad = pool(x), rng.normal(size=(2, 3, 5, 6))
    dx = np.zeros_like(x)
    for n, c, r, q in itertools.product(*map(range, y.shape)):
        window = x[n, c, r:r + 2, q:q + 2]
        assert y[n, c, r, q] == window.max()
        i, j = np.unravel_index(np.argmax(window), (2, 2))          # argmax: the first maximum, row-major
        dx[n, c, r + i, q + j] += grad[n, c, r, q]
    np.testing.assert_allclose(pool.backward(grad), dx, atol=1e-12)
    tie = MaxPool2D(2)
    tie(np.zeros((1, 1, 2, 2)))
    np.testing.assert_array_equal(tie.backward(np.ones((1, 1, 1, 1))), [[[[1., 0.], [0., 0.]]]])

def test_avg_pool_values():
    x = np.arange(16.).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(AvgPool2D(2)(x), [[[[2.5, 4.5], [10.5, 12.5]]]])
    pool = AvgPool2D(3, stride=1, padding=1)                          # zero padding counts, as in PyTorch
    assert pool(np.ones((1, 1, 3, 3)))[0, 0, 0, 0] == pytest.approx(4 / 9)

def test_bad_input_raises_value_error_naming_the_layer_and_shapes():
    conv = Conv2D(1, 6, 5, padding=2)
    with pytest.raises(ValueError, match=r'Conv2D\(in_channels=1, .*expected input of shape \(N, 1, H, W\), got \(2, 3, 28, 28\)'):
        conv(np.ones((2, 3, 28, 28)))
    with pytest.raises(ValueError, match=r'Conv2D.*got \(784,\)'): conv(np.ones(784))
    with pytest.raises(ValueError, match=r'Conv2D\(in_channels=6.*H ≥ 5 and W ≥ 5.*got \(2, 6, 4, 9\)'):
        Conv2D(6, 16, 5)(np.ones((2, 6, 4, 9)))
    conv(np.ones((2, 1, 28, 28)))
    with pytest.raises(ValueError, match=r'Conv2D.*backward expected input of shape \(2, 6, 28, 28\), got \(2, 6, 28, 27\)'):
        conv.backward(np.ones((2, 6, 28, 27)))
    for bad in [dict(kernel_size=0), dict(kernel_size=(2, 2, 2)), dict(kernel_size=3, stride=0), dict(kernel_size=3, padding=-1), dict(kernel_size=2.5)]:
        with pytest.raises(ValueError, match='Conv2D expected'): Conv2D(1, 2, **bad)
    with pytest.raises(ValueError, match=r'MaxPool2D\(kernel_size=2, stride=2, padding=0\) expected input of shape \(N, C, H, W\), got \(3, 8, 8\)'):
        MaxPool2D(2)(np.ones((3, 8, 8)))
    with pytest.raises(ValueError, match=r'AvgPool2D.*H ≥ 3 and W ≥ 3.*got \(1, 1, 2, 5\)'):
        AvgPool2D(3)(np.ones((1, 1, 2, 5)))
    with pytest.raises(ValueError, match=r'Flatten\(\) expected input of shape \(N, \.\.\.\)'): Flatten()(np.ones(5))

def test_float32_stays_float32_and_float64_works():
    x32 = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    for layer in [Conv2D(3, 4, 3, padding=1), MaxPool2D(2), AvgPool2D(2, padding=1), Flatten()]:
        y = layer(x32)
        assert y.dtype == np.float32, layer
        assert layer.backward(np.ones_like(y)).dtype == np.float32, layer
        assert all(g.dtype == np.float32 for g in layer.grads.values()), layer
    conv = Conv2D(3, 4, 3).astype(np.float64)
    y = conv(x32.astype(np.float64))
    assert y.dtype == np.float64 and conv.backward(np.ones_like(y)).dtype == np.float64
    assert Conv2D(3, 4, 3)(np.ones((1, 3, 5, 5), np.uint8)).dtype == np.float32

def test_needs_input_grad_false_skips_the_input_gradient():
    rng = np.random.default_rng(0)
    x, a, b = rng.normal(size=(2, 1, 9, 9)), Conv2D(1, 3, 3, rng=0, dtype=np.float64), Conv2D(1, 3, 3, rng=0, dtype=np.float64)
    b.needs_input_grad = False
    grad = rng.normal(size=a(x).shape); b(x)
    assert a.backward(grad) is not None and b.backward(grad) is None
    for k in a.grads: np.testing.assert_array_equal(a.grads[k], b.grads[k])

@pytest.mark.parametrize('layer', [Conv2D(3, 8, (3, 5), stride=(1, 2), padding=1), Conv2D(1, 6, 5, padding=2), Conv2D(2, 2, [1, 1], 2, (0, 1)),
                                   MaxPool2D(2), MaxPool2D((2, 3), stride=1, padding=(1, 0)), AvgPool2D(3, 2, 1), Flatten()])
def test_config_round_trip(layer):
    cfg = json.loads(json.dumps(layer.config()))
    rebuilt = type(layer)(**cfg)
    assert rebuilt.config() == cfg and repr(rebuilt) == repr(layer)
    assert {k: v.shape for k, v in rebuilt.params.items()} == {k: v.shape for k, v in layer.params.items()}
    x = np.random.default_rng(0).normal(size=(2, getattr(layer, 'in_channels', 3), 9, 9))
    if isinstance(layer, Conv2D): rebuilt.params = {k: v.copy() for k, v in layer.params.items()}
    np.testing.assert_array_equal(rebuilt(x), layer(x))


# ---- issue 12: pooling padding, one-axis overlaps, constructor arguments (items 10, 13, 14) ----

def pool_loops(x, kind, k, s, p, grad):
    "Max or average pooling and its input gradient, one output element at a time; padding is never a candidate for the max"
    (kh, kw), (sh, sw), (ph, pw) = pair(k), pair(k if s is None else s), pair(p)
    N, C, H, W = x.shape
    y, dx = np.zeros((N, C, out_size(H, kh, sh, ph), out_size(W, kw, sw, pw))), np.zeros_like(x)
    for n, c, r, q in itertools.product(*map(range, y.shape)):
        cells = [(r*sh + i - ph, q*sw + j - pw) for i in range(kh) for j in range(kw)]   # row-major window order
        real = [(a, b) for a, b in cells if 0 <= a < H and 0 <= b < W]
        if kind == 'max':
            values = [x[n, c, a, b] for a, b in real]
            y[n, c, r, q] = max(values)
            a, b = real[values.index(max(values))]                  # the first real maximum
            dx[n, c, a, b] += grad[n, c, r, q]
        else:
            y[n, c, r, q] = sum(x[n, c, a, b] for a, b in real) / (kh * kw)   # zero padding counts in the mean
            for a, b in real: dx[n, c, a, b] += grad[n, c, r, q] / (kh * kw)
    return y, dx

ONE_AXIS = [(2, (2, 1), 0), (2, (1, 2), 0), ((3, 2), (1, 2), (1, 0)), ((2, 3), (2, 1), (0, 1)), (3, (3, 1), 1)]

@pytest.mark.parametrize('cls', [MaxPool2D, AvgPool2D])
@pytest.mark.parametrize('k,s,p', ONE_AXIS)
def test_pool_windows_overlapping_along_one_axis_match_loops(cls, k, s, p):
    "Issue 12.14: only shapes were tested for windows that overlap along one axis; values and gradients now are"
    rng = np.random.default_rng(0)
    x = np.round(np.maximum(rng.normal(size=(2, 3, 7, 8)), 0), 1)   # ties, as after a ReLU
    layer = cls(k, s, p)
    assert any(a < b for a, b in zip(layer.stride, layer.kernel_size)) and not all(a < b for a, b in zip(layer.stride, layer.kernel_size))
    y = layer(x)
    grad = rng.normal(size=y.shape)
    y_ref, dx_ref = pool_loops(x, 'max' if cls is MaxPool2D else 'avg', k, s, p, grad)
    np.testing.assert_allclose(y, y_ref, atol=1e-12)
    np.testing.assert_allclose(layer.backward(grad), dx_ref, atol=1e-12)

def test_max_pool_padding_never_wins_even_against_minus_infinity():
    "Issue 12.13: MaxPool2D(3, stride=1, padding=1) on an all -inf input sent gradient into the padding (sum 4, not 9)"
    pool = MaxPool2D(3, stride=1, padding=1)
    x = np.full((1, 1, 3, 3), -np.inf)
    assert np.array_equal(pool(x), x)
    dx = pool.backward(np.ones((1, 1, 3, 3)))
    assert dx.sum() == 9
    np.testing.assert_array_equal(dx, pool_loops(x, 'max', 3, 1, 1, np.ones((1, 1, 3, 3)))[1])
    rng = np.random.default_rng(1)                                   # mixed: some windows all -inf, some not
    x = np.where(rng.random((2, 2, 6, 7)) < 0.6, -np.inf, rng.normal(size=(2, 2, 6, 7)))
    for k, s, p in [(3, 1, 1), (2, 2, 1), ((3, 2), (2, 1), (1, 1)), (3, 2, 1)]:
        pool = MaxPool2D(k, s, p)
        y = pool(x)
        grad = rng.normal(size=y.shape)
        y_ref, dx_ref = pool_loops(x, 'max', k, s, p, grad)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_allclose(pool.backward(grad), dx_ref, atol=1e-12)
        np.testing.assert_allclose(pool.backward(grad), dx_ref, atol=1e-12)   # a second backward gives the same

@pytest.mark.parametrize('args, kwargs, message', [
    ((0, 6, 5), {}, 'Conv2D expected in_channels to be a positive integer, got 0'),           # was ZeroDivisionError
    ((-1, 6, 5), {}, 'Conv2D expected in_channels to be a positive integer, got -1'),         # was OverflowError
    ((2.5, 6, 5), {}, 'Conv2D expected in_channels to be a positive integer, got 2.5'),       # was TypeError
    ((True, 6, 5), {}, 'Conv2D expected in_channels to be a positive integer, got True'),
    ((3, 0, 5), {}, 'Conv2D expected out_channels to be a positive integer, got 0'),          # was accepted: a layer with no output
    ((3, '6', 5), {}, "Conv2D expected out_channels to be a positive integer, got '6'"),
    ((3, 6, (5, -1)), {}, 'Conv2D expected kernel_size to be an int or a pair of ints ≥ 1'),
    ((3, 6, 5), dict(stride=(1, 0)), 'Conv2D expected stride'),
    ((3, 6, 5), dict(padding=1.0), 'Conv2D expected padding'),
    ((3, 6, 5), dict(dtype='U5'), 'Conv2D expected dtype to be a floating-point dtype'),      # was TypeError from the initialiser
    ((3, 6, 5), dict(dtype=np.int64), 'Conv2D expected dtype'),
])
def test_conv_constructor_arguments_are_value_errors_naming_the_layer(args, kwargs, message):
    "Issue 12.9/12.10: bad sizes raised ZeroDivisionError, OverflowError, TypeError, or built an unusable layer"
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        Conv2D(*args, **kwargs)

@pytest.mark.parametrize('cls', [MaxPool2D, AvgPool2D])
@pytest.mark.parametrize('kwargs, name', [(dict(kernel_size=0), 'kernel_size'), (dict(kernel_size=2.0), 'kernel_size'),
                                          (dict(kernel_size=False), 'kernel_size'), (dict(kernel_size=2, stride=0), 'stride'),
                                          (dict(kernel_size=2, stride=(2, -1)), 'stride'), (dict(kernel_size=2, padding=-1), 'padding'),
                                          (dict(kernel_size=(2, 2, 2)), 'kernel_size')])
def test_pool_constructor_arguments_are_value_errors_naming_the_layer(cls, kwargs, name):
    with pytest.raises(ValueError, match=f'{cls.__name__} expected {name}'):
        cls(**kwargs)
