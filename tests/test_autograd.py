"The installed package from the outside: chapter 08 (autograd)."
import subprocess, sys
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

from tinynn_book.autograd import (Tensor, AutoDense, AutoSoftmaxCrossEntropy, GELU, SiLU, auto_mlp, check_tensor_grads,
                                  concatenate, no_grad, softmax_cross_entropy, unbroadcast)
from tinynn_book.layers import Dense, check_layer_grads
from tinynn_book.losses import SoftmaxCrossEntropy
from tinynn_book.mnist import mlp
from tinynn_book.model import Model
from tinynn_book.optim import Adam
from tinynn_book.tensor import rel_error

BINARY = {'add': lambda a, b: a + b, 'sub': lambda a, b: a - b, 'mul': lambda a, b: a * b,
          'div': lambda a, b: a / b, 'pow': lambda a, b: a ** b}


def test_imports_without_notebook_machinery():
    # chapters 00-06 are imported first, so only what autograd itself pulls in is judged here
    code = ("import sys, tinynn_book.mnist\n"
            "before = set(sys.modules)\n"
            "import tinynn_book.autograd\n"
            "bad = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('nbdev', 'fastcore', 'execnb', 'IPython', 'torch'))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == '', f"importing tinynn_book.autograd pulled in {out}"


def test_star_import_does_not_shadow_builtins():
    namespace = {}
    exec('from tinynn_book.autograd import *', namespace)
    for name in ('sum', 'max', 'exp', 'log', 'backward', 'reshape'): assert name not in namespace, name
    assert sum([1, 2]) == 3 and max(1, 2) == 2


# ---- binary ops: random shapes and broadcasting patterns ----

@settings(max_examples=40, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=3),
       op=st.sampled_from(sorted(BINARY)), seed=st.integers(0, 2**16), tensor_side=st.sampled_from(['both', 'left', 'right']))
def test_binary_ops_broadcast_and_gradients(shapes, op, seed, tensor_side):
    (sa, sb), out_shape = shapes.input_shapes, shapes.result_shape
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, sa) if op == 'pow' else rng.normal(size=sa)
    b = rng.uniform(0.5, 2.0, sb) if op in ('div', 'pow') else rng.normal(size=sb)
    f = BINARY[op]
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    left, right = (ta, tb) if tensor_side == 'both' else (ta, b) if tensor_side == 'left' else (a, tb)
    out = f(left, right)
    assert isinstance(out, Tensor) and out.shape == out_shape and out.dtype == np.float64
    np.testing.assert_allclose(out.data, f(a, b), rtol=1e-12)
    out.backward(rng.normal(size=out_shape))
    for t, used in ((ta, tensor_side != 'right'), (tb, tensor_side != 'left')):
        assert (t.grad is not None) == used
        if used: assert t.grad.shape == t.shape and t.grad.dtype == np.float64
    assert max(check_tensor_grads(f, a, b, rng=seed)) < 1e-6


@settings(max_examples=30, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=1, base_shape=(2, 3, 4), max_dims=3, min_side=1, max_side=4))
def test_unbroadcast_is_the_adjoint_of_broadcasting(shapes):
    (shape,), full = shapes.input_shapes, shapes.result_shape
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=shape), rng.normal(size=full)
    # <broadcast(x), g> == <x, unbroadcast(g)> for every x and g: the definition of the adjoint
    assert np.isclose(np.sum(np.broadcast_to(x, full) * g), np.sum(x * unbroadcast(g, shape)))
    assert unbroadcast(g, shape).shape == shape


@pytest.mark.parametrize('op', sorted(BINARY))
def test_mismatched_shapes_name_the_op_and_both_shapes(op):
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4,)))
    with pytest.raises(ValueError, match=rf"{op}: shapes \(2, 3\) and \(4,\)"): BINARY[op](a, b)
    with pytest.raises(ValueError, match=rf"{op}: shapes \(2, 3\) and \(4,\)"): BINARY[op](a, np.ones(4))


def test_other_shape_errors():
    v = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) @ \(2, 3\)"): v @ np.ones((2, 3))
    with pytest.raises(ValueError, match=r"matmul: shapes \(3,\) @ \(3, 2\)"): Tensor(np.ones(3)) @ np.ones((3, 2))
    with pytest.raises(ValueError, match=r"reshape: cannot reshape \(2, 3\)"): v.reshape(4, 2)
    with pytest.raises(ValueError, match="concatenate: shapes"): concatenate([v, np.ones((3, 3))], axis=1)
    with pytest.raises(ValueError, match="softmax_cross_entropy"): softmax_cross_entropy(v, [0, 1, 2])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"): softmax_cross_entropy(v, [0, 3])
    with pytest.raises(ValueError, match="integer labels"): softmax_cross_entropy(v, [0.0, 1.0])


# ---- backward: accumulation, zero_grad, errors, depth ----

def test_gradients_accumulate_for_reused_tensors():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    (x * x).sum().backward()                        # one op, both operands
    np.testing.assert_array_equal(x.grad, 2 * x.data)
    x.zero_grad()
    y = x * 3                                       # an intermediate used by two ops
    (y.exp().sum() + (y * y).sum()).backward()
    np.testing.assert_allclose(x.grad, 3 * np.exp(3 * x.data) + 18 * x.data, rtol=1e-12)
    x.zero_grad()
    x[[0, 0, 2]].sum().backward()                   # one element indexed twice
    np.testing.assert_array_equal(x.grad, [2.0, 0.0, 1.0])


def test_leaf_gradients_accumulate_across_calls_until_zero_grad():
    w = Tensor(np.ones(2), requires_grad=True)
    for _ in range(3): (w * 2).sum().backward()
    np.testing.assert_array_equal(w.grad, [6.0, 6.0])
    w.zero_grad(); assert w.grad is None
    (w * 2).sum().backward()
    np.testing.assert_array_equal(w.grad, [2.0, 2.0])


def test_leaf_grad_is_its_own_array():
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    g = np.arange(3.0)
    (a + b).backward(g)
    assert a.grad is not g and b.grad is not g and a.grad is not b.grad
    a.grad[0] = 99
    assert b.grad[0] == 0 and g[0] == 0
    c = Tensor(np.ones(3), requires_grad=True)
    h = c * 2                                        # an intermediate that receives the same array as leaf b
    (h + b - c).backward(g)
    for x, y in ((b, c), (b, a), (c, a)): assert not np.shares_memory(x.grad, y.grad)
    np.testing.assert_array_equal(c.grad, g)         # 2g through h, -g directly


def test_backward_errors():
    v = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"needs a one-element tensor, got shape \(2, 3\)"): (v * 2).backward()
    with pytest.raises(RuntimeError, match="does not require a gradient"): Tensor(np.ones(3)).sum().backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\)"): (v * 2).backward(np.ones(3))
    s = (v * 2).sum(); s.backward()
    with pytest.raises(RuntimeError, match="earlier backward"): s.backward()
    s = (v * 2).sum(); s.backward(retain_graph=True); s.backward()
    np.testing.assert_array_equal(v.grad, np.full((2, 3), 6.0))


@pytest.mark.parametrize('data', [np.arange(3), [1, 2], np.array([True, False]), 3])
def test_integer_tensors_cannot_require_grad(data):
    with pytest.raises(TypeError, match="only floating-point tensors"): Tensor(data, requires_grad=True)
    assert not Tensor(data).requires_grad


def test_deep_graph_no_recursion_error():
    x = Tensor(np.array(1.0), requires_grad=True)
    z = x
    for i in range(10_000): z = (z * 1.0001).tanh() + 0.0 if i % 2 else z * 1.0001
    z.backward()
    assert np.isfinite(x.grad) and x.grad > 0
    chain = Tensor(np.ones(2), requires_grad=True)
    w = chain
    for _ in range(20_000): w = w + 1.0
    del w                                            # freeing a deep graph that never ran backward


def test_no_grad_records_nothing_and_restores_on_error():
    w = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        z = (w * 2).exp().sum()
        assert not z.requires_grad and z._parents == ()
    with pytest.raises(ZeroDivisionError):
        with no_grad(): 1 / 0
    assert (w * 2).requires_grad


def test_dtype_policy():
    assert Tensor(1.5).dtype == np.float32 and Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.ones(2)).dtype == np.float64 and Tensor([1, 2]).dtype == np.int64
    x = Tensor(np.ones((2, 2), np.float32), requires_grad=True)
    y = (2.5 * x - 1) / 3 + np.float64(0.5)          # Python and numpy scalars do not promote float32
    assert y.dtype == np.float32
    (y * np.ones((2, 2))).sum().backward()            # a float64 array does promote, but the leaf's grad keeps its dtype
    assert x.grad.dtype == np.float32


def test_every_op_gradient_checks():
    rng = np.random.default_rng(0)
    A, pos = rng.normal(size=(3, 4)), rng.uniform(0.5, 2, (3, 4))
    fs = [lambda a: a.exp() * a.tanh() + a.sigmoid() - a.relu(), lambda a: (a * a + 1).log(), lambda a: a ** 3,
          lambda a: a.sum(axis=1, keepdims=True) * a.mean(axis=0), lambda a: a.max(axis=0) + a.max(),
          lambda a: a.reshape(4, 3).T.transpose().reshape(3, 4) * a, lambda a: a[1:, [0, 0, 3]] * a[0, :3],
          lambda a: concatenate([a, -a[:, :2]], axis=1), lambda a: a @ a.T @ a, lambda a: -a / (a * a + 1),
          lambda a: softmax_cross_entropy(a, [0, 3, 1]) * a]
    for f in fs: assert max(check_tensor_grads(f, A)) < 1e-7, f
    assert max(check_tensor_grads(lambda b, e: b ** e, pos, A)) < 1e-7


def test_max_splits_ties_evenly():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5], [0.5, 0, 0.5]])


# ---- the bridge to the framework ----

def test_autograd_layers_pass_the_chapter_1_checker():
    x = np.random.default_rng(1).normal(size=(4, 5))
    for layer in (SiLU(), GELU(), AutoDense(5, 3, rng=0)):
        assert max(check_layer_grads(layer, x).values()) < 1e-7, layer


def test_auto_dense_equals_dense_to_float64_precision():
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=(6, 5)), rng.normal(size=(6, 3))
    hand, auto = Dense(5, 3, rng=0, dtype=np.float64), AutoDense(5, 3, rng=0, dtype=np.float64)
    np.testing.assert_array_equal(hand(x), auto(x))
    dx_hand, dx_auto = hand.backward(g), auto.backward(g)
    assert rel_error(dx_hand, dx_auto) < 1e-15
    for k in hand.grads: assert rel_error(hand.grads[k], auto.grads[k]) < 1e-15


def test_auto_mlp_trains_in_lockstep_with_the_hand_written_one():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(64, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 64)
    hand = Model(mlp(rng=3), SoftmaxCrossEntropy(), Adam(1e-3))
    auto = Model(auto_mlp(rng=3), AutoSoftmaxCrossEntropy(), Adam(1e-3))
    for i in range(3):
        xb, yb = x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]
        assert hand.train_step(xb, yb) == auto.train_step(xb, yb)
    for a, h in zip(auto.net.params.values(), hand.net.params.values()): np.testing.assert_array_equal(a, h)
    np.testing.assert_array_equal(auto.predict(x), hand.predict(x))


def test_evaluation_mode_records_no_graph():
    layer = SiLU()
    layer.training = False
    layer.forward(np.ones((2, 3)))
    assert not hasattr(layer, '_y') or layer._y is None


# ---- parity with PyTorch autograd (optional dependency) ----

def _torch_ops(torch):
    return dict(sum=lambda t, axis=None, keepdims=False: t.sum() if axis is None else t.sum(dim=axis, keepdim=keepdims),
                mean=lambda t, axis=None, keepdims=False: t.mean() if axis is None else t.mean(dim=axis, keepdim=keepdims),
                max=lambda t, axis=None, keepdims=False: t.amax() if axis is None else t.amax(dim=axis, keepdim=keepdims),
                cat=lambda ts, axis=0: torch.cat(ts, dim=axis), T=lambda t: t.transpose(-1, -2),
                ce=lambda z, y: torch.nn.functional.cross_entropy(z, torch.as_tensor(y)))

OURS = dict(sum=lambda t, axis=None, keepdims=False: t.sum(axis=axis, keepdims=keepdims),
            mean=lambda t, axis=None, keepdims=False: t.mean(axis=axis, keepdims=keepdims),
            max=lambda t, axis=None, keepdims=False: t.max(axis=axis, keepdims=keepdims),
            cat=lambda ts, axis=0: concatenate(ts, axis=axis), T=lambda t: t.T, ce=softmax_cross_entropy)

COMPOSITES = {  # each takes (a (3, 4), b (4,), p (3, 4) positive, ops) -> a tensor
    'broadcast arithmetic': lambda a, b, p, o: (a * b - b / p + 2.0) ** 2 - (1 - a) / 3,
    'unary chain': lambda a, b, p, o: (a.tanh() * a.sigmoid() + a.relu()).exp() + (p * p + 1).log(),
    'tensor exponent': lambda a, b, p, o: p ** b + 2 ** a,
    'reductions': lambda a, b, p, o: o['sum'](a, 1, True) * o['mean'](p, 0) + o['max'](a * b, 0) - o['max'](a),
    'matmul and transpose': lambda a, b, p, o: (a @ o['T'](p)).tanh() @ a + a.reshape(4, 3).reshape(3, 4),
    'indexing and concat': lambda a, b, p, o: o['cat']([a[[0, 0, 2]], p[1:] * b], 0)[:, 1:3] * a[0, :2],
    'reuse': lambda a, b, p, o: (a * a).sum() * a + a.exp() * a,
    'cross-entropy': lambda a, b, p, o: o['ce'](a * b, [3, 0, 1]) * (p + a),
}


@pytest.mark.parametrize('name', list(COMPOSITES))
def test_parity_with_torch_composites(name):
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(0)
    arrays = rng.normal(size=(3, 4)), rng.normal(size=(4,)), rng.uniform(0.5, 2, (3, 4))
    g = rng.normal(size=COMPOSITES[name](*map(Tensor, arrays), OURS).shape)
    ours = [Tensor(x, requires_grad=True) for x in arrays]
    COMPOSITES[name](*ours, OURS).backward(g)
    theirs = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in arrays]
    out = COMPOSITES[name](*theirs, _torch_ops(torch))
    out.backward(torch.tensor(g))
    for o, t in zip(ours, theirs):
        if t.grad is None: assert o.grad is None; continue
        np.testing.assert_allclose(o.grad, t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_parity_with_torch_mlp():
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 20)), rng.integers(0, 5, 16)
    shapes = {'w1': (20, 32), 'b1': (32,), 'w2': (32, 16), 'b2': (16,), 'w3': (16, 5), 'b3': (5,)}
    params = {k: rng.normal(scale=0.3, size=s) for k, s in shapes.items()}
    def forward(p, x, act, ce):
        h = act(x @ p['w1'] + p['b1'])
        h = (h @ p['w2'] + p['b2']).tanh()
        return ce(h @ p['w3'] + p['b3'], y)
    ours = {k: Tensor(v, requires_grad=True) for k, v in params.items()}
    forward(ours, Tensor(x), lambda t: t.relu() + 0.1 * t * t.sigmoid(), softmax_cross_entropy).backward()
    theirs = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    loss = forward(theirs, torch.tensor(x), lambda t: t.relu() + 0.1 * t * t.sigmoid(),
                   lambda z, y: torch.nn.functional.cross_entropy(z, torch.as_tensor(y)))
    loss.backward()
    for k in params: np.testing.assert_allclose(ours[k].grad, theirs[k].grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('layer, approximate', [(SiLU, None), (GELU, 'tanh')])
def test_activation_parity_with_torch(layer, approximate):
    torch = pytest.importorskip('torch')
    x = np.linspace(-6, 6, 101)
    ours = layer()
    y = ours.forward(x)
    dx = ours.backward(np.ones_like(x))
    t = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.silu(t) if approximate is None else torch.nn.functional.gelu(t, approximate=approximate)
    ty.sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-12, atol=1e-14)


# ---- issue 20: careless and hostile use ----

def test_no_grad_is_per_thread():
    import threading
    w = Tensor(np.ones(3), requires_grad=True)
    inside, done, seen = threading.Event(), threading.Event(), []
    def evaluate():                                   # a second thread predicting under no_grad
        with no_grad(): inside.set(); done.wait(5)
    t = threading.Thread(target=evaluate); t.start(); inside.wait(5)
    seen.append((w * 2).requires_grad)                # the training thread keeps recording meanwhile
    done.set(); t.join()
    with no_grad():
        worker = threading.Thread(target=lambda: seen.append((w * 2).requires_grad)); worker.start(); worker.join()
        seen.append((w * 2).requires_grad)
    assert seen == [True, True, False]


def test_no_grad_nested_restores_the_previous_flag():
    w = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        with no_grad(): pass
        assert not (w * 2).requires_grad              # the inner exit restored "off"
        with pytest.raises(KeyError):
            with no_grad(): raise KeyError
        assert not (w * 2).requires_grad
    assert (w * 2).requires_grad


def test_transpose_backward_uses_the_inverse_permutation():
    rng = np.random.default_rng(0)
    x, g = Tensor(rng.normal(size=(2, 3, 4)), requires_grad=True), rng.normal(size=(3, 4, 2))
    x.transpose(1, 2, 0).backward(g)                  # (1, 2, 0) is not its own inverse: (2, 0, 1) is
    np.testing.assert_array_equal(x.grad, g.transpose(2, 0, 1))
    assert max(check_tensor_grads(lambda a: a.transpose((2, 0, 1)) * 1.5, rng.normal(size=(2, 3, 4)))) < 1e-8


def _in_place_changes():
    return {'setitem': lambda t: t.data.__setitem__(Ellipsis, 0), 'slice': lambda t: t.data.__setitem__(0, 5.0),
            'iadd': lambda t: t.data.__iadd__(1), 'view of data': lambda t: t.data[:1].fill(7),
            'ufunc out=': lambda t: np.multiply(t.data, 0, out=t.data), 'copyto': lambda t: np.copyto(t.data, 3.0),
            'add.at': lambda t: np.add.at(t.data, [0], 1.0), 'fill': lambda t: t.data.fill(0),
            'assign data': lambda t: setattr(t, 'data', np.zeros(2))}


@pytest.mark.parametrize('change', list(_in_place_changes()))
def test_in_place_change_between_forward_and_backward_is_refused(change):
    x, w = Tensor(np.ones(2), requires_grad=True), Tensor(np.array([2.0, 3.0]), requires_grad=True)
    y = (x * w).sum()
    _in_place_changes()[change](w)
    with pytest.raises(RuntimeError, match="backward through 'mul'"): y.backward()
    x, w = Tensor(np.ones(2), requires_grad=True), Tensor(np.array([2.0, 3.0]), requires_grad=True)
    y = x.exp() * w                                    # exp saves its own output
    _in_place_changes()[change](y)
    with pytest.raises(RuntimeError, match="backward through 'mul'"): y.sum().backward()


def test_reading_data_or_changing_a_copy_is_no_change():
    x, w = Tensor(np.ones(2), requires_grad=True), Tensor(np.array([2.0, 3.0]), requires_grad=True)
    y = (x * w).sum()
    d = w.data.copy(); d[...] = 0; c = w.data[[0, 1]]; c += 1        # copies, not w's array
    _ = w.data * 2, w.data.sum(), repr(w.data), np.asarray(w.data).max()
    y.backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad, [2.0, 3.0])
    w.data -= 1                                        # after backward: fine until the graph is used again
    with pytest.raises(RuntimeError, match="backward through 'mul'"): y.backward()
    x.zero_grad(); (x * w).sum().backward()            # a new forward pass sees the new values
    np.testing.assert_array_equal(x.grad, [1.0, 2.0])


def test_mean_over_an_empty_axis_is_an_error():
    with pytest.raises(ValueError, match=r"mean: axis 0 of a tensor of shape \(0, 3\) is empty"):
        Tensor(np.ones((0, 3))).mean(axis=0)
    with pytest.raises(ValueError, match="is empty"): Tensor(np.ones((3, 0))).mean()
    empty = Tensor(np.ones((0, 3)), requires_grad=True)
    out = empty.mean(axis=1)                          # averaging 3 numbers, zero times: fine
    assert out.shape == (0,)
    out.sum().backward(); assert empty.grad.shape == (0, 3)


# ---- issue 20 item 13: the AutogradLayer bridge ----

from tinynn_book.autograd import AutogradLayer, AutogradLoss, AutoReLU
from tinynn_book.model import Net


class _Unused(AutogradLayer):
    def __init__(self): super().__init__(); self.params = {'w': np.ones(3), 'b': np.ones(3)}
    def compute(self, x, w, b): return x * w           # b is never used


class _Constant(AutogradLayer):
    def __init__(self): super().__init__(); self.params = {'b': np.ones(3)}
    def compute(self, x, b): return b * np.ones((len(x), 1))   # does not depend on x


def test_unused_parameter_gets_a_zero_gradient_and_trains():
    rng = np.random.default_rng(0)
    model = Model(Net([Dense(3, 3, rng=0), _Unused()]), SoftmaxCrossEntropy(), Adam(1e-2))
    b = model.net.params['1.b'].copy()
    model.train_step(rng.normal(size=(4, 3)), np.array([0, 1, 2, 0]))
    np.testing.assert_array_equal(model.net.grads['1.b'], np.zeros(3))
    np.testing.assert_array_equal(model.net.params['1.b'], b)


def test_output_independent_of_the_input_gives_a_zero_input_gradient():
    net = Net([Dense(3, 3, rng=0), _Constant()])
    net.forward(np.ones((2, 3)))
    dx = net.backward(np.ones((2, 3)))
    np.testing.assert_array_equal(dx, np.zeros((2, 3)))
    np.testing.assert_array_equal(net.grads['0.w'], np.zeros((3, 3)))
    np.testing.assert_array_equal(net.grads['1.b'], [2.0, 2.0, 2.0])


@pytest.mark.parametrize('make', [SiLU, AutoReLU, lambda: AutoDense(3, 2, rng=0)])
def test_backward_without_a_training_forward_is_refused(make):
    x, refused = np.ones((2, 3)), "needs a forward pass in training mode first"
    layer = make(); g = np.ones_like(layer(x)); layer.backward(g)     # forward then backward: fine
    with pytest.raises(RuntimeError, match=refused): make().backward(g)   # no forward at all
    with pytest.raises(RuntimeError, match=refused): layer.backward(g)    # twice
    layer.training = False; layer(x)
    with pytest.raises(RuntimeError, match=refused): layer.backward(g)    # after an eval-only forward
    layer.training = True; layer(x); layer.training = False; layer(2 * x)
    with pytest.raises(RuntimeError, match=refused): layer.backward(g)    # train forward, eval forward
    layer.training = True; layer(x)
    with pytest.raises(ValueError, match="expected grad of shape"): layer.backward(np.ones((5, 5)))


def test_abstract_bases_are_refused_also_from_a_checkpoint(tmp_path):
    import json
    from tinynn_book.model import META_KEY
    with pytest.raises(TypeError, match="AutogradLayer is abstract"): AutogradLayer()
    with pytest.raises(TypeError, match="AutogradLoss is abstract"): AutogradLoss()
    for where, spec in (('layer', {'class': 'AutogradLayer', 'module': 'tinynn_book.autograd', 'config': {}}),
                        ('loss', {'class': 'AutogradLoss', 'module': 'tinynn_book.autograd', 'config': {}})):
        path = Model(Net([AutoReLU()]), SoftmaxCrossEntropy(), Adam(1e-3)).save(tmp_path / f'{where}.npz')
        meta = json.loads(bytes(np.load(path)[META_KEY]).decode())
        if where == 'layer': meta['net']['config']['layers'][0] = spec
        else: meta['loss'] = spec
        np.savez(path, **{META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8)})
        with pytest.raises(ValueError, match="is abstract"): Model.load(path)


def test_concrete_subclasses_keep_their_constructor_signatures():
    import inspect
    assert list(inspect.signature(AutoDense).parameters)[:2] == ['num_in', 'num_out']
    assert list(inspect.signature(SiLU).parameters) == []
    assert AutoDense(4, 2, rng=0).params['w'].shape == (4, 2)


# ---- issue 20 item 14: autograd is CPU-only, and says so ----

def test_autograd_layers_refuse_other_devices_and_keep_their_arrays():
    from tinynn_book.backend import standin_device
    from tinynn_book.tensor import device_of, to_device
    standin_device()
    net = auto_mlp(rng=0)
    with pytest.raises(ValueError, match="autograd layers are CPU-only"): net.to('standin')
    assert all(device_of(p) == 'cpu' for p in net.params.values())
    with pytest.raises(ValueError, match="autograd layers are CPU-only"): AutoDense(3, 2, rng=0).to('standin')
    assert AutoDense(3, 2, rng=0).to('cpu').params['w'].shape == (3, 2)
    with pytest.raises(TypeError, match="autograd is CPU-only"): Tensor(to_device(np.ones(3), 'standin'))
    with pytest.raises(TypeError, match="autograd is CPU-only"): SiLU()(to_device(np.ones((2, 3)), 'standin'))


def test_a_refused_move_leaves_every_layer_where_it_was():
    "A net whose later layer refuses the device is not left half moved: the layers moved before it come back"
    from tinynn_book.backend import standin_device
    from tinynn_book.model import Net
    from tinynn_book.optim import SGD
    standin_device()
    net = Net([Dense(3, 4, rng=0), Net([Dense(4, 4, rng=1)]), AutoDense(4, 2, rng=0)])
    before = {k: p.copy() for k, p in net.params.items()}
    with pytest.raises(ValueError, match="autograd layers are CPU-only"): net.to('standin')
    assert all(type(p) is np.ndarray for p in net.params.values())
    assert all(type(g) is np.ndarray for layer in net.layers[:1] for g in layer.grads.values())
    for k, p in net.params.items(): np.testing.assert_array_equal(p, before[k])
    model = Model(net, SoftmaxCrossEntropy(), SGD(0.1))
    with pytest.raises(ValueError, match="CPU-only"): model.to('standin')
    assert model.device == 'cpu' and model.train_step(np.ones((2, 3)), np.array([0, 1])) > 0
