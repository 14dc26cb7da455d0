"The losses from the outside: hypothesis-generated shapes and magnitudes, gradients against central differences, dtypes, bad input."
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from tinynn_book.losses import (MAE, MSE, Huber, SigmoidCrossEntropy, SoftmaxCrossEntropy, log_softmax, one_hot,
                                softmax)
from tinynn_book.tensor import numerical_grad, rel_error

fast = settings(max_examples=25, deadline=None, database=None)
scales = st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e3])
seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 4)
shapes = st.lists(small, min_size=1, max_size=3).map(tuple)
ELEMENTWISE = [MSE, MAE, Huber, SigmoidCrossEntropy]   # each gets its own examples; hypothesis draws Huber's delta
deltas = st.sampled_from([0.1, 0.5, 1.0, 2.0, 10.0])


def make(cls, delta): return cls(delta) if cls is Huber else cls()


def step(scale):
    "Central-difference step: a loss of size L is known to about L * 1e-16, so bigger inputs need a bigger step"
    return 1e-6 * max(1.0, scale)


def ce_target(kind, N, C, rng):
    labels = rng.integers(0, C, N)
    if kind == 'labels': return labels
    if kind == 'one-hot': return one_hot(labels, C, dtype=np.float64)
    return rng.dirichlet(np.ones(C), N)  # soft rows summing to 1


def regression_target(loss, shape, scale, rng):
    if isinstance(loss, SigmoidCrossEntropy): return rng.uniform(size=shape)
    return scale * rng.normal(size=shape)


def kinks(loss):
    "Residuals where the loss is not smooth: MAE's derivative jumps at 0, Huber's second derivative at +-delta"
    if isinstance(loss, MAE): return [0.0]
    if isinstance(loss, Huber): return [-loss.delta, loss.delta]
    return []


def away_from_kinks(loss, pred, target, h):
    "`pred` with every residual within 10 steps of a kink moved out to 10 steps, so no central difference straddles one"
    r = pred - target
    for k in kinks(loss):
        r = np.where(np.abs(r - k) < 10 * h, k + np.where(r >= k, 10 * h, -10 * h), r)
    return target + r


def check_loss_and_grad(loss, pred, target, eps):
    value = loss(pred, target)
    assert type(value) is float and np.isfinite(value), (loss, value)
    grad = loss.grad(pred, target)
    assert grad.shape == pred.shape and grad.dtype == pred.dtype, (grad.shape, grad.dtype)
    assert np.isfinite(grad).all()
    numeric = numerical_grad(lambda: loss(pred, target), pred, h=eps)
    # Central differences resolve a gradient only to about (rounding of the loss) / eps. A confidently right
    # classifier has a true gradient of 1e-9 (or 1e-112) and a loss known to 1e-16, so there relative error
    # means nothing and an absolute difference below that resolution is a pass.
    resolution = 1e-15 * max(1.0, abs(value)) / eps
    err, worst = rel_error(grad, numeric), np.abs(grad - numeric).max()
    assert err < 1e-7 or worst < resolution, (loss, err, worst, resolution)


@fast
@given(N=small, C=st.integers(1, 5), scale=scales, offset=st.sampled_from([0.0, 1e3, -1e3]),
       kind=st.sampled_from(['labels', 'one-hot', 'soft']), seed=seeds)
def test_softmax_cross_entropy_hypothesis(N, C, scale, offset, kind, seed):
    rng = np.random.default_rng(seed)
    logits, target = offset + scale * rng.normal(size=(N, C)), ce_target(kind, N, C, rng)
    check_loss_and_grad(SoftmaxCrossEntropy(), logits, target, step(scale))


@pytest.mark.parametrize('cls', ELEMENTWISE, ids=lambda c: c.__name__)
@fast
@given(delta=deltas, shape=shapes, scale=scales, seed=seeds)
@example(delta=0.1, shape=(4, 4), scale=1e-3, seed=292)    # a residual within one step of MAE's kink at 0
@example(delta=0.1, shape=(4, 4), scale=0.1, seed=12121)   # ... and of Huber's kink at +-delta
def test_elementwise_losses_hypothesis(cls, delta, shape, scale, seed):
    loss, rng = make(cls, delta), np.random.default_rng(seed)
    pred = scale * rng.normal(size=shape)
    target = regression_target(loss, shape, scale, rng)
    check_loss_and_grad(loss, away_from_kinks(loss, pred, target, step(scale)), target, step(scale))


@pytest.mark.parametrize('cls', ELEMENTWISE, ids=lambda c: c.__name__)
@fast
@given(delta=deltas, shape=shapes, scale=scales, seed=seeds)
def test_mean_reduction(cls, delta, shape, scale, seed):
    "Repeating the batch leaves a mean unchanged and halves each element's gradient"
    loss, rng = make(cls, delta), np.random.default_rng(seed)
    pred = scale * rng.normal(size=shape)
    target = regression_target(loss, shape, scale, rng)
    pred2, target2 = np.concatenate([pred, pred]), np.concatenate([target, target])
    assert np.isclose(loss(pred2, target2), loss(pred, target), rtol=1e-12, atol=0)
    np.testing.assert_allclose(loss.grad(pred2, target2)[:len(pred)], loss.grad(pred, target) / 2, rtol=1e-12, atol=1e-300)


@fast
@given(N=small, C=st.integers(1, 5), scale=scales, shift=st.floats(-1e3, 1e3), seed=seeds)
def test_softmax_shift_invariance(N, C, scale, shift, seed):
    rng = np.random.default_rng(seed)
    logits, labels = scale * rng.normal(size=(N, C)), rng.integers(0, C, N)
    probs = softmax(logits)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1, atol=1e-12)
    np.testing.assert_allclose(softmax(logits + shift), probs, atol=1e-12)
    np.testing.assert_allclose(np.exp(log_softmax(logits)), probs, atol=1e-12)
    ce = SoftmaxCrossEntropy()
    assert np.isclose(ce(logits + shift, labels), ce(logits, labels), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('cls', [SoftmaxCrossEntropy] + ELEMENTWISE, ids=lambda c: c.__name__)
@fast
@given(N=small, C=st.integers(1, 5), scale=scales, seed=seeds)
def test_float32_stays_float32(cls, N, C, scale, seed):
    loss, rng = make(cls, np.float64(0.5)), np.random.default_rng(seed)   # a numpy delta must not promote either
    pred64 = scale * rng.normal(size=(N, C))
    if isinstance(loss, SoftmaxCrossEntropy): targets = [rng.integers(0, C, N), one_hot(rng.integers(0, C, N), C, dtype=np.int64)]
    elif isinstance(loss, SigmoidCrossEntropy): targets = [rng.uniform(size=(N, C)), rng.uniform(size=(N, C)) > 0.5]
    else: targets = [rng.normal(size=(N, C)), rng.integers(-3, 3, (N, C)), rng.normal(size=(N, C)).tolist()]
    for target in targets:  # float64, integer, boolean and list targets must not promote the gradient
        value, grad = loss(pred64.astype(np.float32), target), loss.grad(pred64.astype(np.float32), target)
        assert type(value) is float and np.isfinite(value)
        assert grad.dtype == np.float32 and grad.shape == (N, C)
        np.testing.assert_allclose(grad, loss.grad(pred64.astype(np.float32).astype(np.float64), target), rtol=1e-4, atol=1e-6)
        assert loss.grad(pred64, target).dtype == np.float64


@pytest.mark.parametrize('loss', [SoftmaxCrossEntropy(), MSE(), MAE(), Huber(), SigmoidCrossEntropy()], ids=repr)
def test_integer_pred_is_cast_to_float32(loss):
    pred = np.array([[2, -1, 0], [0, 1, 3]])
    target = np.array([0, 2]) if isinstance(loss, SoftmaxCrossEntropy) else np.array([[1, 0, 0], [0, 1, 1]])
    assert loss.grad(pred, target).dtype == np.float32
    assert np.isclose(loss(pred, target), loss(pred.astype(np.float64), target), rtol=1e-6)


# Values and gradients PyTorch 2.13 computes for the same float64 inputs (F.cross_entropy, F.mse_loss, F.l1_loss,
# F.huber_loss, F.binary_cross_entropy_with_logits), all with the default reduction 'mean'.
p3, t3 = np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 1.0])
z3, y3 = np.array([0.0, 2.0, -3.0]), np.array([1.0, 0.0, 1.0])
KNOWN = [
    (SoftmaxCrossEntropy(), np.array([[2.0, 1.0, 0.1]]), np.array([0]), 0.41703001627783354, [[-0.3409988611140321, 0.2424329707047139, 0.0985658904093182]]),
    (SoftmaxCrossEntropy(), np.array([[1000.0, 0.0, -1000.0]]), np.array([1]), 1000.0, [[1.0, -1.0, 0.0]]),
    (SoftmaxCrossEntropy(), np.array([[2.0, 1.0, 0.1]]), np.array([[0.5, 0.25, 0.0]]), 0.5627725122083751,
     [[-0.005749145835524078, -0.06817527197146458, 0.07392441780698865]]),  # rows not summing to 1: (6), not (8)
    (MSE(), p3, t3, 1.4166666666666667, [-1/3, 0.0, 4/3]),
    (MAE(), p3, t3, 0.8333333333333334, [-1/3, 0.0, 1/3]),
    (Huber(), p3, t3, 0.5416666666666666, [-1/6, 0.0, 1/3]),
    (Huber(0.5), p3, t3, 0.3333333333333333, [-1/6, 0.0, 1/6]),
    (SigmoidCrossEntropy(), z3, y3, 1.9562208477255532, [-1/6, 0.29359902599262744, -0.3175247089408111]),
    (SigmoidCrossEntropy(), np.array([-1000.0, 1000.0]), np.array([1.0, 1.0]), 500.0, [-0.5, 0.0]),
]

@pytest.mark.parametrize('loss,pred,target,value,grad', KNOWN, ids=[f'{k[0]!r}-{i}' for i, k in enumerate(KNOWN)])
def test_known_values(loss, pred, target, value, grad):
    assert np.isclose(loss(pred, target), value, rtol=1e-12, atol=0)
    np.testing.assert_allclose(loss.grad(pred, target), grad, rtol=0, atol=1e-15)


x43 = np.zeros((4, 3))
BAD = [
    (MSE(), x43, np.zeros((4, 1)), 'MSE() expected target of shape (4, 3)', '(4, 1)'),
    (MSE(), np.zeros((4, 1)), np.zeros(4), 'MSE() expected target of shape (4, 1)', '(4,)'),
    (MAE(), x43, np.zeros((3, 4)), 'MAE() expected target of shape (4, 3)', '(3, 4)'),
    (Huber(2.0), x43, np.zeros(3), 'Huber(delta=2.0) expected target of shape (4, 3)', '(3,)'),
    (SigmoidCrossEntropy(), x43, np.zeros((4, 3, 1)), 'SigmoidCrossEntropy() expected target of shape (4, 3)', '(4, 3, 1)'),
    (SigmoidCrossEntropy(), x43, np.full((4, 3), 1.5), 'SigmoidCrossEntropy() expected targets in [0, 1]', '(4, 3)'),
    (SigmoidCrossEntropy(), x43, np.full((4, 3), -0.5), 'SigmoidCrossEntropy() expected targets in [0, 1]', '(4, 3)'),
    (SoftmaxCrossEntropy(), x43, np.array([0, 1, 2, 3]), 'SoftmaxCrossEntropy() expected labels in [0, 3)', 'logits (4, 3) and target (4,)'),
    (SoftmaxCrossEntropy(), x43, np.array([0, -1, 2, 0]), 'SoftmaxCrossEntropy() expected labels in [0, 3)', 'logits (4, 3) and target (4,)'),
    (SoftmaxCrossEntropy(), x43, np.array([0.0, 1.0, 2.0, 0.0]), 'SoftmaxCrossEntropy() expected integer labels of shape (4,)', 'logits (4, 3) and target (4,) (dtype float64)'),
    (SoftmaxCrossEntropy(), x43, np.array([0, 1, 2]), 'SoftmaxCrossEntropy() expected integer labels of shape (4,)', 'logits (4, 3) and target (3,)'),
    (SoftmaxCrossEntropy(), x43, np.zeros((4, 2)), 'SoftmaxCrossEntropy() expected targets of shape (4, 3)', 'logits (4, 3) and target (4, 2)'),
    (SoftmaxCrossEntropy(), np.zeros(3), np.array([0]), 'SoftmaxCrossEntropy() expected logits of shape (N, C)', 'logits (3,) and target (1,)'),
    (SoftmaxCrossEntropy(), np.zeros((2, 4, 3)), np.array([0, 1]), 'SoftmaxCrossEntropy() expected logits of shape (N, C)', 'logits (2, 4, 3) and target (2,)'),
    (SoftmaxCrossEntropy(), np.zeros((0, 3)), np.zeros(0, int), 'SoftmaxCrossEntropy() expected logits of shape (N, C)', 'logits (0, 3)'),
    (MSE(), np.zeros((0, 3)), np.zeros((0, 3)), 'MSE() got an empty prediction', '(0, 3)'),
]

@pytest.mark.parametrize('loss,pred,target,message,shape', BAD, ids=[f'{b[0]!r}-{i}' for i, b in enumerate(BAD)])
@pytest.mark.parametrize('method', ['loss', 'grad'])
def test_bad_input(loss, pred, target, message, shape, method):
    with pytest.raises(ValueError) as info: getattr(loss, method)(pred, target)
    assert message in str(info.value) and shape in str(info.value), str(info.value)


def test_bad_constructor_and_one_hot():
    for delta in [0, -1.0, float('nan'), float('inf'), '1', None, True]:
        with pytest.raises(ValueError, match='Huber expected delta to be a finite number > 0'): Huber(delta)
    for num_classes in [0, -1, 2.0, '3', None]:
        with pytest.raises(ValueError, match='one_hot expected num_classes to be a positive integer'): one_hot([0], num_classes)
    assert Huber(np.float32(0.5)).config() == {'delta': 0.5} and type(Huber(2).delta) is float
    with pytest.raises(ValueError, match=r'one_hot expected labels in \[0, 3\)'): one_hot([0, 3], 3)
    with pytest.raises(ValueError, match='one_hot expected integer labels'): one_hot([0.0, 1.0], 3)
    np.testing.assert_array_equal(one_hot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])
    assert one_hot([2, 0], 3).dtype == np.float32 and repr(Huber(0.5)) == 'Huber(delta=0.5)'


@pytest.mark.parametrize('dtype, gap, underflows', [(np.float32, 90.0, False), (np.float32, 110.0, True),
                                                    (np.float64, 110.0, False), (np.float64, 750.0, True)])
def test_underflow_depends_on_dtype(dtype, gap, underflows):
    "softmax underflows near e^-104 in float32 and e^-745 in float64; log_softmax stays exact in both"
    z = np.array([[0.0, -gap]], dtype=dtype)
    assert (softmax(z)[0, 1] == 0) == underflows
    np.testing.assert_array_equal(log_softmax(z), z)
    assert log_softmax(z).dtype == dtype


@given(delta=deltas, seed=seeds)
@fast
def test_huber_is_half_mse_inside_and_delta_mae_outside(delta, seed):
    rng = np.random.default_rng(seed)
    inside = delta * rng.uniform(-0.99, 0.99, size=7)
    outside = delta * rng.uniform(1.01, 5, size=7) * rng.choice([-1, 1], size=7)
    zero = np.zeros(7)
    np.testing.assert_allclose(Huber(delta).grad(inside, zero), MSE().grad(inside, zero) / 2, rtol=1e-12)
    np.testing.assert_allclose(Huber(delta)(inside, zero), MSE()(inside, zero) / 2, rtol=1e-12)
    np.testing.assert_allclose(Huber(delta).grad(outside, zero), delta * MAE().grad(outside, zero), rtol=1e-12)


def test_one_hot_and_labels_agree_at_a_minus_inf_logit():
    "0 * log 0 is 0: a one-hot row must not turn a masked class's -inf log-probability into NaN"
    logits = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf], [-np.inf, 3.0, -1.0]])
    labels = np.array([2, 0, 1])
    ce, targets = SoftmaxCrossEntropy(), one_hot(labels, 3, dtype=np.float64)
    expected = (np.log1p(np.e) - 1 + np.logaddexp(2.0, 0.5) - 2.0 + np.logaddexp(3.0, -1.0) - 3.0) / 3   # by hand
    with np.errstate(all='raise'):
        assert np.isclose(ce(logits, labels), expected, rtol=1e-14)
        assert np.isclose(ce(logits, targets), expected, rtol=1e-14)                # was NaN
        soft = np.array([[0.5, 0.0, 0.5], [1.0, 0.0, 0.0], [0.0, 0.25, 0.75]])         # soft rows: zeros at -inf too
        assert np.isfinite(ce(logits, soft))
        np.testing.assert_array_equal(ce.grad(logits, targets), ce.grad(logits, labels))
        assert ce.grad(logits, labels)[0, 1] == ce.grad(logits, labels)[2, 0] == 0.0
    assert ce(logits, np.array([1, 0, 1])) == ce(logits, one_hot([1, 0, 1], 3, dtype=np.float64)) == np.inf


def test_sigmoid_cross_entropy_at_infinite_logits():
    "The limits: a logit of +-inf that agrees with its target costs 0, one that disagrees costs inf; never NaN"
    bce = SigmoidCrossEntropy()
    z, y = np.array([np.inf, -np.inf, np.inf, -np.inf, np.inf]), np.array([1.0, 0.0, 0.0, 1.0, 0.5])
    with np.errstate(all='raise'):
        assert bce(z[:2], y[:2]) == 0.0                                               # was NaN
        np.testing.assert_array_equal(bce.grad(z[:2], y[:2]), [0.0, 0.0])
        for i, value in enumerate([0.0, 0.0, np.inf, np.inf, np.inf]):
            assert bce(z[i:i + 1], y[i:i + 1]) == value, (z[i], y[i])
        np.testing.assert_array_equal(bce.grad(z, y), np.array([0.0, 0.0, 1.0, -1.0, 0.5]) / 5)
        assert bce(np.array([np.inf, 2.0]), np.array([1.0, 0.3])) == bce(np.array([2.0]), np.array([0.3])) / 2
        assert bce(z[:2].astype(np.float32), y[:2]) == 0.0
