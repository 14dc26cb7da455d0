"The optimizers and schedules of tinynn_book.optim, from the outside: hand-computed steps, in-place float32 updates, schedules."
import math
import numpy as np
import pytest
from tinynn_book.optim import (SGD, AdaGrad, RMSProp, Adam, AdamW, Optimizer, step_lr, exponential_lr, cosine_lr,
                               linear_warmup_lr, sequential_lr, warmup_cosine_lr)


def descend(opt, num_steps=2, theta0=2.0, dtype=np.float64):
    "θ after each update of `opt` on f(θ) = θ²/2, whose gradient is θ"
    p, thetas = np.array([theta0], dtype), []
    for _ in range(num_steps):
        opt.step([(p, p.copy())])
        thetas.append(float(p[0]))
    return thetas

# Two steps from θ0 = 2 on f = θ²/2, worked out by hand (the chapter's table); eps=0 where ε would blur the digits.
_adam_m2, _adam_v2 = 0.9 * 0.2 + 0.1 * 1.9, 0.999 * 0.004 + 0.001 * 1.9**2
_adamw_v2 = 0.999 * 0.004 + 0.001 * 1.88**2
HAND = {
    'sgd': (SGD(0.1), [1.8, 1.62]),
    'momentum': (SGD(0.1, momentum=0.9), [1.8, 1.8 - 0.1 * (0.9 * 2 + 1.8)]),
    'nesterov': (SGD(0.1, momentum=0.9, nesterov=True), [1.62, 1.62 - 0.1 * (1.62 + 0.9 * (0.9 * 2 + 1.62))]),
    'sgd_weight_decay': (SGD(0.1, weight_decay=0.5), [1.7, 1.445]),
    # Nesterov and weight decay together: g' = θ + 0.1 θ feeds both the buffer v and the look-ahead term g' + μ v
    'nesterov_weight_decay': (SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
                              [2 - 0.1 * (2.2 + 0.9 * 2.2), 1.582 - 0.1 * (1.1 * 1.582 + 0.9 * (0.9 * 2.2 + 1.1 * 1.582))]),
    'adagrad': (AdaGrad(0.1, eps=0.0), [1.9, 1.9 - 0.1 * 1.9 / math.sqrt(4 + 1.9**2)]),
    'rmsprop': (RMSProp(0.01, eps=0.0), [1.9, 1.9 - 0.01 * 1.9 / math.sqrt(0.99 * 0.04 + 0.01 * 1.9**2)]),
    'rmsprop_momentum': (RMSProp(0.01, momentum=0.5, eps=0.0), [1.9, 1.9 - 0.01 * (0.5 * 10 + 1.9 / math.sqrt(0.0757))]),
    'adam': (Adam(0.1, eps=0.0), [1.9, 1.9 - 0.1 * (_adam_m2 / 0.19) / math.sqrt(_adam_v2 / 0.001999)]),
    'adamw': (AdamW(0.1, weight_decay=0.1, eps=0.0), [1.88, 0.99 * 1.88 - 0.1 * (0.368 / 0.19) / math.sqrt(_adamw_v2 / 0.001999)]),
    # a large ε pins down where it is added: outside the square root, after Adam's bias correction
    'adagrad_eps': (AdaGrad(0.1, eps=1.0), [_t1 := 2 - 0.1 * 2 / (2 + 1), _t1 - 0.1 * _t1 / (math.sqrt(4 + _t1**2) + 1)]),
    'rmsprop_eps': (RMSProp(0.01, eps=0.1), [_t1, _t1 - 0.01 * _t1 / (math.sqrt(0.99 * 0.04 + 0.01 * _t1**2) + 0.1)]),
    'adam_eps': (Adam(0.1, eps=1.0), [_t1, _t1 - 0.1 * ((0.18 + 0.1 * _t1) / 0.19) / (math.sqrt((0.003996 + 0.001 * _t1**2) / 0.001999) + 1)]),
}


@pytest.mark.parametrize('name', HAND)
def test_two_steps_by_hand(name):
    opt, expected = HAND[name]
    opt = type(opt)(**opt.config())  # a fresh copy: the table's instance must not carry state between runs
    np.testing.assert_allclose(descend(opt), expected, rtol=0, atol=1e-12)


def test_default_eps_only_moves_the_last_digits():
    np.testing.assert_allclose(descend(AdaGrad(0.1)), HAND['adagrad'][1], atol=1e-9)
    np.testing.assert_allclose(descend(RMSProp(0.01)), HAND['rmsprop'][1], atol=1e-7)
    np.testing.assert_allclose(descend(Adam(0.1)), HAND['adam'][1], atol=1e-7)


def every_optimizer(lr=0.1):
    return [SGD(lr), SGD(lr, momentum=0.9, weight_decay=0.1), SGD(lr, momentum=0.9, nesterov=True),
            AdaGrad(lr, weight_decay=0.1), RMSProp(lr), RMSProp(lr, momentum=0.9, weight_decay=0.1),
            Adam(lr), Adam(lr, weight_decay=0.1), AdamW(lr)]


@pytest.mark.parametrize('opt', every_optimizer(), ids=repr)
def test_in_place_and_float32(opt):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(5, 3)).astype(np.float32), np.zeros(3, np.float32)
    params = {'w': w, 'b': b}
    opt.lr = np.float64(opt.lr)  # what a schedule built on numpy might hand over: must not upcast anything
    w_before = w.copy()
    for _ in range(3):
        opt.step([(params[k], rng.normal(size=params[k].shape).astype(np.float32)) for k in params])
    assert params['w'] is w and params['b'] is b           # the same array objects...
    assert not np.array_equal(w, w_before)                 # ...with new values
    assert w.dtype == np.float32 and b.dtype == np.float32
    for state in opt.state.values():
        assert all(v.dtype == np.float32 for v in state.values() if isinstance(v, np.ndarray))


@pytest.mark.parametrize('opt', every_optimizer(lr=0.0), ids=repr)
def test_zero_lr_changes_nothing(opt):
    p = np.array([1.0, -2.0, 3.0])
    for _ in range(3): opt.step([(p, np.array([0.5, 0.5, -4.0]))])
    np.testing.assert_array_equal(p, [1.0, -2.0, 3.0])


def test_lr_is_mutable_mid_run():
    # SGD on f = θ²/2: the step after the change uses the new rate
    p, opt = np.array([2.0]), SGD(0.1)
    opt.step([(p, p.copy())]); opt.lr = 0.5; opt.step([(p, p.copy())])
    np.testing.assert_allclose(p, [1.8 - 0.5 * 1.8], atol=1e-12)
    # Adam: the new rate scales the second step, the state carries over unchanged
    p, opt = np.array([2.0]), Adam(0.1, eps=0.0)
    opt.step([(p, p.copy())]); opt.lr = 0.05; opt.step([(p, p.copy())])
    np.testing.assert_allclose(p, [1.9 - 0.05 * (_adam_m2 / 0.19) / math.sqrt(_adam_v2 / 0.001999)], atol=1e-12)
    assert opt.state[0]['t'] == 2


def test_state_is_per_parameter():
    opt = Adam(0.1)
    p1, p2 = np.ones((2, 2)), np.ones(3)
    opt.step([(p1, np.full((2, 2), 4.0)), (p2, np.full(3, -1.0))])
    assert set(opt.state) == {0, 1}
    np.testing.assert_allclose(opt.state[0]['m'], 0.4)
    np.testing.assert_allclose(opt.state[1]['m'], -0.1)


def test_bad_input():
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(3, 2\) \(its parameter's\), got \(2,\)"):
        SGD(0.1).step([(np.zeros((3, 2)), np.zeros(2))])
    with pytest.raises(ValueError, match=r"Adam expected beta1 in \[0, 1\), got 1.5"): Adam(beta1=1.5)
    with pytest.raises(ValueError, match=r"SGD expected lr in \[0, inf\), got -1"): SGD(-1)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"): SGD(0.1, nesterov=True)
    with pytest.raises(NotImplementedError): Optimizer(0.1).step([(np.zeros(2), np.zeros(2))])


def test_adamw_defaults_and_decoupling():
    assert AdamW().config() == dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
    # zero loss gradient: L2 inside Adam ignores λ's size, AdamW shrinks by (1 - lr λ) per step
    def path(opt, n=200):
        p = np.ones(1)
        for _ in range(n): opt.step([(p, np.zeros(1))])
        return p[0]
    assert path(Adam(1e-3, weight_decay=0.1, eps=0.0)) == pytest.approx(path(Adam(1e-3, weight_decay=1.0, eps=0.0)), abs=1e-12)
    assert path(AdamW(1e-3, weight_decay=1.0)) == pytest.approx((1 - 1e-3)**200, rel=1e-9)


def test_l2_in_adam_depends_on_gradient_scale_adamw_does_not():
    # Weights started at 1 with pure-noise loss gradients of scale σ (the same noise, scaled), 1000 steps at lr 1e-3.
    # AdamW removes the same fraction of every weight, like SGD's L2 penalty; Adam + L2 decays quiet weights far more
    # than noisy ones, and only λ/σ matters.
    sigmas = np.array([0.0, 0.1, 1.0])[:, None]
    def left(opt, n=200, steps=1000):
        rng, p = np.random.default_rng(0), np.ones((3, n))
        for _ in range(steps): opt.step([(p, sigmas * rng.normal(size=(1, n)))])
        return p.mean(axis=1)
    np.testing.assert_allclose(left(AdamW(1e-3, weight_decay=0.1)), (1 - 1e-4)**1000, atol=0.01)
    np.testing.assert_allclose(left(SGD(1e-3, weight_decay=0.1)), (1 - 1e-4)**1000, atol=0.01)
    adam_l2 = left(Adam(1e-3, weight_decay=0.1))
    assert adam_l2[0] < adam_l2[1] < adam_l2[2]
    assert adam_l2[2] - adam_l2[0] > 0.5
    assert left(Adam(1e-3, weight_decay=1.0))[2] == pytest.approx(adam_l2[1], abs=1e-6)


def test_schedules_at_chosen_steps():
    assert step_lr(0.1, step_size=10, gamma=0.5)(25) == pytest.approx(0.025)
    assert step_lr(0.1, step_size=10, gamma=0.5)(9) == pytest.approx(0.1)
    assert exponential_lr(0.1, gamma=0.9)(2) == pytest.approx(0.081)
    cos = cosine_lr(1.0, total_steps=100, min_lr=0.1)
    assert [cos(t) for t in (0, 50, 100, 150)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert [linear_warmup_lr(0.1, 10)(t) for t in (0, 5, 10, 50)] == pytest.approx([0.0, 0.05, 0.1, 0.1])
    assert linear_warmup_lr(1.0, 4, start_factor=0.2)(2) == pytest.approx(0.6)
    wc = warmup_cosine_lr(0.1, warmup_steps=10, total_steps=110)
    assert [wc(t) for t in (0, 5, 10, 60, 110, 500)] == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.0, 0.0], abs=1e-15)
    seq = sequential_lr([exponential_lr(1.0, 0.5), step_lr(0.3, 2)], milestones=[3])
    assert [seq(t) for t in range(6)] == pytest.approx([1.0, 0.5, 0.25, 0.3, 0.3, 0.03])
    assert type(cos(np.int64(3))) is float


def test_schedule_drives_an_optimizer():
    schedule, opt, p = step_lr(0.1, step_size=1, gamma=0.5), SGD(1.0), np.array([1.0])
    for step in range(3):
        opt.lr = schedule(step)
        opt.step([(p, np.array([1.0]))])
    np.testing.assert_allclose(p, [1.0 - 0.1 - 0.05 - 0.025], atol=1e-12)


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="expected a step >= 0, got -1"): cosine_lr(0.1, 10)(-1)
    with pytest.raises(ValueError, match="step_lr expected step_size to be a positive integer, got 0"): step_lr(0.1, 0)
    with pytest.raises(ValueError, match="total_steps > warmup_steps"): warmup_cosine_lr(0.1, 10, 5)
    with pytest.raises(ValueError, match="increasing positive milestones"): sequential_lr([cosine_lr(0.1, 5)] * 2, [0])
