"The installed package from the outside: chapters 00 (tensor) and 01 (layers)."
import subprocess, sys
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinynn_book
from tinynn_book.tensor import as_float, check_input, grad_check
from tinynn_book.layers import Dense, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh, check_layer_grads

ACTIVATIONS = [ReLU, LeakyReLU, Sigmoid, Tanh, Softplus]


def test_imports_without_notebook_machinery():
    code = ("import sys, tinynn_book, tinynn_book.tensor, tinynn_book.layers\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('nbdev', 'fastcore', 'execnb', 'IPython'))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == '', f"importing tinynn_book pulled in notebook machinery: {out}"
    assert tinynn_book.__version__


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
