"The installed package from the outside: chapters 0 (tensor) and 1 (layers)."
import configparser, re, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinynn_book
from tinynn_book.tensor import as_float, check_input, grad_check, numerical_grad
from tinynn_book.layers import Dense, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh, check_arg, check_layer_grads

ACTIVATIONS = [ReLU, LeakyReLU, Sigmoid, Tanh, Softplus]


def _imported_by_the_package():
    "Top-level names of the modules that `import tinynn_book` loads, in a fresh interpreter"
    code = ("import sys, tinynn_book, tinynn_book.tensor, tinynn_book.layers\n"
            "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))")
    return set(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip().split(','))


def test_imports_without_notebook_machinery():
    bad = sorted(_imported_by_the_package() & {'nbdev', 'execnb', 'IPython'})
    assert not bad, f"importing tinynn_book pulled in notebook machinery: {bad}"
    assert tinynn_book.__version__


def test_runtime_imports_are_declared():
    "A package that only the dev extras install must not be imported at runtime unless `requirements` declares it"
    cfg = configparser.ConfigParser(); cfg.read(Path(__file__).parents[1] / 'settings.ini')
    declared = {re.split(r'[<>=!~ \[]', r)[0].lower() for r in cfg['DEFAULT']['requirements'].split()}
    undeclared = sorted(m for m in _imported_by_the_package() & {'fastcore', 'hypothesis', 'pytest'} if m not in declared)
    assert not undeclared, (f"importing tinynn_book imports {undeclared}, which settings.ini lists only in dev_requirements: "
                            "add it to `requirements` or stop importing it from exported cells")


@pytest.mark.parametrize('make', [lambda: Dense(5, 3)] + ACTIVATIONS, ids=['Dense'] + [a.__name__ for a in ACTIVATIONS])
def test_float32_stays_float32(make):
    layer = make()
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert all(g.dtype == np.float32 for g in layer.grads.values())


@pytest.mark.parametrize('act', ACTIVATIONS, ids=lambda a: a.__name__)
def test_activation_dtypes_and_grads(act):
    rng = np.random.default_rng(1)
    assert act()(np.arange(-3, 3)).dtype == np.float32      # integer input is cast, deliberately
    assert act()(rng.normal(size=(2, 3))).dtype == np.float64
    assert check_layer_grads(act(), rng.normal(size=(3, 4)))['x'] < 1e-7


def test_stable_sigmoid_and_softplus():
    x = np.array([-1000., 0., 1000.])
    with np.errstate(over='raise', invalid='raise', divide='raise'):
        np.testing.assert_allclose(Sigmoid()(x), [0., 0.5, 1.])
        np.testing.assert_allclose(Softplus()(x), [0., np.log(2), 1000.])


class BrokenDense(Dense):
    "Dense whose input gradient forgets the transpose: grad @ w instead of grad @ w.T (runs when square)"
    def backward(self, grad):
        super().backward(grad)
        return grad @ self.params['w']


class BrokenBiasDense(Dense):
    "Dense that averages the bias gradient over the batch instead of summing it"
    def backward(self, grad):
        dx = super().backward(grad)
        self.grads['b'] = grad.mean(0)
        return dx


def test_checker_catches_a_wrong_backward():
    x = np.random.default_rng(0).normal(size=(4, 5))
    assert max(check_layer_grads(Dense(5, 3), x).values()) < 1e-7
    errs = check_layer_grads(BrokenDense(5, 5), x)
    assert errs['x'] > 1e-2 and errs['w'] < 1e-7 and errs['b'] < 1e-7
    errs = check_layer_grads(BrokenBiasDense(5, 3), x)
    assert errs['b'] > 1e-2 and errs['x'] < 1e-7


def test_grad_check_catches_a_wrong_gradient():
    x = np.random.default_rng(0).normal(size=(3, 2))
    assert grad_check(lambda: float(np.sum(np.sin(x))), x, np.cos(x)) < 1e-8
    assert grad_check(lambda: float(np.sum(np.sin(x))), x, -np.cos(x)) > 0.5


def test_step_is_h_and_eps_is_an_older_name_for_it():
    x = np.random.default_rng(0).normal(size=(3, 2))
    f = lambda: float(np.sum(x**3))
    coarse = numerical_grad(f, x, h=1e-2)
    assert np.array_equal(numerical_grad(f, x, 1e-2), coarse)           # positional third argument is h
    assert np.array_equal(numerical_grad(f, x, eps=1e-2), coarse)       # the older keyword still works
    assert not np.array_equal(numerical_grad(f, x), coarse)             # ... and really sets the step
    assert np.allclose(coarse, 3 * x**2 + 1e-4, atol=1e-9)              # (4): truncation h^2 f'''/6 = h^2 for x^3
    assert grad_check(f, x, 3 * x**2, h=1e-2) == grad_check(f, x, 3 * x**2, eps=1e-2)
    x0 = np.random.default_rng(1).normal(size=(4, 5))
    assert check_layer_grads(Dense(5, 3, rng=0), x0, h=1e-3) == check_layer_grads(Dense(5, 3, rng=0), x0, eps=1e-3)
    assert check_layer_grads(Dense(5, 3, rng=0), x0, 0, 1e-3) == check_layer_grads(Dense(5, 3, rng=0), x0, h=1e-3)


def test_dense_bad_input():
    with pytest.raises(ValueError) as e:
        Dense(5, 3)(np.ones((8, 7)))
    msg = str(e.value)
    assert 'Dense' in msg and '(N, 5)' in msg and '(8, 7)' in msg
    with pytest.raises(ValueError, match=r'got \(5,\)'):
        Dense(5, 3)(np.ones(5))


def test_dense_dtype_policy():
    layer = Dense(5, 3)
    assert layer(np.ones((2, 5), np.int64)).dtype == np.float32
    assert Dense(5, 3, dtype=np.float64)(np.ones((2, 5))).dtype == np.float64
    assert check_input(np.ones((2, 3), np.uint8), ('N', 3), 'X').dtype == np.float32
    assert as_float(np.ones(2, np.float64)).dtype == np.float64


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 6), num_in=st.integers(1, 6), num_out=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_dense_shapes_and_grads(N, num_in, num_out, seed):
    rng = np.random.default_rng(seed)
    layer = Dense(num_in, num_out, rng=rng)
    x = rng.normal(size=(N, num_in)).astype(np.float32)
    y = layer(x)
    assert y.shape == (N, num_out) and y.dtype == np.float32
    dx = layer.backward(rng.normal(size=y.shape).astype(np.float32))
    assert dx.shape == (N, num_in)
    assert layer.grads['w'].shape == (num_in, num_out) and layer.grads['b'].shape == (num_out,)
    errs = check_layer_grads(layer, rng.normal(size=(N, num_in)), rng=seed)
    assert max(errs.values()) < 1e-7, errs


@pytest.mark.parametrize('args, message', [((0, 3), 'num_in to be a positive integer, got 0'),
                                           ((-5, 3), 'num_in to be a positive integer, got -5'),
                                           ((5, 0), 'num_out to be a positive integer, got 0'),
                                           ((2.5, 3), 'num_in to be a positive integer, got 2.5'),
                                           ((5, 3.0), 'num_out to be a positive integer, got 3.0'),
                                           (('5', 3), "num_in to be a positive integer, got '5'"),
                                           ((True, 3), 'num_in to be a positive integer, got True'),
                                           ((None, 3), 'num_in to be a positive integer, got None')])
def test_dense_constructor_validates(args, message):
    "A ValueError naming the layer and the argument, not a ZeroDivisionError from the initialiser or a TypeError"
    with pytest.raises(ValueError, match='^Dense expected ' + re.escape(message) + '$'): Dense(*args)


@pytest.mark.parametrize('dtype', ['x', '<U5', 'int64', np.int32, bool, 3, object])
def test_dense_dtype_must_be_floating(dtype):
    with pytest.raises(ValueError, match='Dense expected dtype to be a floating-point dtype'): Dense(5, 3, dtype=dtype)


def test_dense_accepts_numpy_sizes_and_stays_json_able():
    import json
    layer = Dense(np.int64(5), np.int32(3), dtype='float64')
    assert json.dumps(layer.config()) == '{"num_in": 5, "num_out": 3}' and layer.params['w'].dtype == np.float64


@pytest.mark.parametrize('slope', ['x', float('nan'), float('inf'), -float('inf'), None, True, [0.1]])
def test_leaky_relu_slope_validated(slope):
    with pytest.raises(ValueError, match='^LeakyReLU expected slope to be a finite number, got '): LeakyReLU(slope)


def test_check_arg():
    assert check_arg(np.int64(3), 'n', 'X') == 3 and type(check_arg(np.int64(3), 'n', 'X')) is int
    assert type(check_arg(np.float32(0.5), 'a', 'X', 'positive')) is float and check_arg(-2, 'a', 'X', 'number') == -2.0
    for value, kind in [(0.0, 'positive'), (float('nan'), 'number'), (10**400, 'number'), (np.bool_(True), 'size')]:
        with pytest.raises(ValueError, match='^X expected v to be '): check_arg(value, 'v', 'X', kind)
    assert LeakyReLU(np.float64(0.2)).config() == {'slope': 0.2} and type(LeakyReLU(np.float64(0.2)).slope) is float


def test_leaky_relu_gradient_at_zero_is_the_slope():
    "x > 0 strictly is the positive side: at exactly 0 the gradient is the slope (a >= mask would give 1)"
    layer = LeakyReLU(0.25)
    x = np.array([[-2.0, 0.0, 3.0], [0.0, -0.0, 1e-300]])
    np.testing.assert_array_equal(layer(x), [[-0.5, 0.0, 3.0], [0.0, -0.0, 1e-300]])
    np.testing.assert_array_equal(layer.backward(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])),
                                  [[0.25, 0.5, 3.0], [1.0, 1.25, 6.0]])  # by hand: slope * grad wherever x <= 0


@pytest.mark.parametrize('act, torch_name', [(LeakyReLU(0.1), 'leaky_relu'), (ReLU(), 'relu')])
def test_kinks_match_pytorch(act, torch_name):
    torch = pytest.importorskip('torch')
    x = np.array([-1.5, -0.0, 0.0, 2.0])
    grad = np.array([1.0, 2.0, 3.0, 4.0])
    xt = torch.tensor(x, requires_grad=True)
    f = getattr(torch.nn.functional, torch_name)
    yt = f(xt, 0.1) if torch_name == 'leaky_relu' else f(xt)
    yt.backward(torch.tensor(grad))
    y = act(x)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(act.backward(grad), xt.grad.numpy())
