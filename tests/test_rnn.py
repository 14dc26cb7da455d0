"The installed package from the outside: chapter 11 (rnn): text data, Embedding, Linear, the sequence loss, clipping, sampling."
import math, random
import numpy as np
import pytest

from tinynn_book.tensor import get_device, to_device, to_numpy, grad_check
from tinynn_book.layers import check_layer_grads
from tinynn_book.losses import SoftmaxCrossEntropy
from tinynn_book.optim import Adam
from tinynn_book.model import Model, Net
from tinynn_book.rnn import (ENV_VAR, CharVocab, Embedding, Linear, SequenceCrossEntropy, check_ids, clip_grad_norm,
                             clipped_step, generate, load_names, load_shakespeare, names_split, random_windows,
                             shakespeare_split, stream_loss)


# ---------------------------------------------------------------- text data
def test_vocab_round_trip_and_errors():
    v = CharVocab.from_text("hello world\n")
    assert v.chars == sorted(set("hello world\n")) and len(v) == 9
    assert v.decode(v.encode("low\n")) == "low\n" and v.encode("").shape == (0,)
    assert v.encode("ll").dtype == np.int64
    with pytest.raises(ValueError, match=r"outside its vocabulary: \['z'\]"): v.encode("lz")
    with pytest.raises(ValueError, match="outside"): v.encode("\U0001F600")   # a code point past the table
    with pytest.raises(ValueError, match="integer ids"): v.decode(np.array([1.0]))
    with pytest.raises(ValueError, match="twice"): CharVocab("aa")
    names = CharVocab.from_text(["ab", "ba"], end=".")
    assert names.chars == [".", "a", "b"] and names.stoi["."] == 0


def test_loaders_sample_env_and_path(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    words, text = load_names(), load_shakespeare()
    assert words == load_names(sample=True) and len(words) == 4005 and all(w.isalpha() and w.islower() for w in words)
    assert text.startswith("First Citizen:") and 100_000 < len(text) < 200_000
    (tmp_path / "names.txt").write_text("anna\nbob\n\n", encoding="utf-8")
    (tmp_path / "tinyshakespeare.txt").write_text("To be.\n", encoding="utf-8")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert load_names() == ["anna", "bob"] and load_shakespeare() == "To be.\n"
    assert load_names(sample=True) == words   # sample wins over the variable
    assert load_names(tmp_path / "names.txt") == ["anna", "bob"]


@pytest.mark.parametrize("content, match", [(b"", "empty"), (b"\n \n", "empty"), (b"ab\xff\xfe\n", "not UTF-8"),
                                            (b"a.b\n", "end token")])
def test_bad_text_files(tmp_path, content, match):
    (tmp_path / "names.txt").write_bytes(content)
    with pytest.raises(ValueError, match=match): load_names(tmp_path)
    with pytest.raises(FileNotFoundError, match="no text file"): load_shakespeare(tmp_path)


def test_splits_are_the_published_ones():
    words = [f"w{i}" for i in range(1001)]
    state = random.getstate()
    tr, dev, te = names_split(words)
    assert random.getstate() == state   # the global generator is left alone
    random.seed(42); ref = list(words); random.shuffle(ref)
    assert tr + dev + te == ref and (len(tr), len(dev), len(te)) == (800, 100, 101)
    a, b = shakespeare_split("x" * 95 + "y" * 5)
    assert (len(a), len(b)) == (90, 10) and isinstance(a, str)
    a, b = shakespeare_split(np.arange(1000))
    assert len(a) == 900 and a[-1] == 899 and b[0] == 900


# ---------------------------------------------------------------- Embedding
def test_embedding_repeated_ids_accumulate():
    emb = Embedding(4, 2, rng=0).astype(np.float64)
    ids = np.array([[1, 1, 1], [3, 1, 0]])
    emb(ids); emb.backward(np.ones((2, 3, 2)))
    np.testing.assert_array_equal(emb.grads["w"][:, 0], [1, 4, 0, 1])


def test_embedding_gradient_check():
    emb = Embedding(7, 3, rng=1).astype(np.float64)
    ids = np.random.default_rng(0).integers(0, 7, (3, 6))
    g = np.random.default_rng(1).normal(size=(3, 6, 3))
    f = lambda: float(np.sum(emb.forward(ids) * g))
    emb.forward(ids); emb.backward(g)
    assert grad_check(f, emb.params["w"], emb.grads["w"].copy()) < 1e-8


@pytest.mark.parametrize("ids, match", [([0, 5], r"in \[0, 5\)"), ([-1], r"in \[0, 5\)"), ([1.5], "non-integer"),
                                        ([np.nan], "non-integer"), ([True], "integer token ids"), (["a"], "integer")])
def test_embedding_bad_ids(ids, match):
    with pytest.raises(ValueError, match=r"Embedding\(num_embeddings=5, embedding_dim=2\).*" + match):
        Embedding(5, 2)(np.array(ids))


def test_embedding_dtype_and_float_ids():
    emb = Embedding(5, 2, dtype=np.float64)
    assert emb(np.array([1, 2])).dtype == np.float64
    np.testing.assert_array_equal(emb(np.array([[1.0, 4.0]])), emb(np.array([[1, 4]])))
    with pytest.raises(ValueError, match="embedding_dim"): Embedding(5, 0)


def test_embedding_and_linear_on_the_standin_device():
    from tinynn_book.backend import standin_device, StandInArray
    standin_device()
    net = Net([Embedding(6, 4, rng=0), Linear(4, 6, rng=0)]).to("standin")
    x = to_device(np.array([[0, 1, 1], [5, 5, 2]]), "standin")
    logits = net(x)
    assert isinstance(logits, StandInArray) and logits.shape == (2, 3, 6)
    loss = SequenceCrossEntropy()
    y = to_device(np.array([[1, 1, 2], [5, 2, 0]]), "standin")
    net.backward(loss.grad(logits, y))
    assert all(isinstance(g, StandInArray) for g in net.grads.values())
    cpu = Net([Embedding(6, 4, rng=0), Linear(4, 6, rng=0)])
    cpu.backward(loss.grad(cpu(np.array([[0, 1, 1], [5, 5, 2]])), np.array([[1, 1, 2], [5, 2, 0]])))
    for k, g in cpu.grads.items(): np.testing.assert_array_equal(to_numpy(net.grads[k]), g)
    with pytest.raises(ValueError, match="token ids in"): net(to_device(np.array([[6]]), "standin"))


# ---------------------------------------------------------------- Linear and the sequence loss
def test_linear_over_last_axis():
    lin = Linear(3, 2, rng=0)
    errs = check_layer_grads(lin, np.random.default_rng(0).normal(size=(2, 4, 3)))
    assert max(errs.values()) < 1e-7, errs
    assert lin(np.zeros((5, 3))).shape == (5, 2) and lin(np.zeros((2, 2, 2, 3))).shape == (2, 2, 2, 2)
    with pytest.raises(ValueError, match=r"Linear\(num_in=3, num_out=2\) expected input of shape \(\.\.\., 3\), got \(2, 4\)"):
        lin(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"expected input"): lin(np.zeros(3))
    lin(np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match=r"backward expected grad of shape \(2, 4, 2\), got \(8, 2\)"): lin.backward(np.zeros((8, 2)))


def test_sequence_loss_errors():
    loss = SequenceCrossEntropy()
    with pytest.raises(ValueError, match=r"logits \(N, T, V\) and targets \(N, T\), got logits \(4, 3\)"): loss.loss(np.zeros((4, 3)), np.zeros(4, int))
    with pytest.raises(ValueError, match=r"labels in \[0, 3\)"): loss.loss(np.zeros((1, 2, 3)), np.array([[0, 3]]))


# ---------------------------------------------------------------- clipping, windows, sampling
def test_clip_grad_norm_small_untouched_large_scaled():
    net = Net([Linear(3, 4, rng=0)])
    net.layers[0].grads = {"w": np.full((3, 4), 0.01, np.float32), "b": np.full(4, 0.01, np.float32)}
    before = {k: g.copy() for k, g in net.grads.items()}
    norm = clip_grad_norm(net, 1.0)
    assert math.isclose(norm, 0.04, rel_tol=1e-6)
    for k in before: np.testing.assert_array_equal(net.grads[k], before[k])
    net.layers[0].grads = {"w": np.full((3, 4), 10.0), "b": np.full(4, 10.0)}
    assert math.isclose(clip_grad_norm(net.parameters(), 2.0), 40.0)
    assert math.isclose(math.sqrt(sum((g**2).sum() for g in net.grads.values())), 2.0, rel_tol=1e-12)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    gs = [rng.normal(size=(3, 4)), rng.normal(size=5)]
    ts = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in gs]
    for t, g in zip(ts, gs): t.grad = torch.tensor(g)
    ref = float(torch.nn.utils.clip_grad_norm_(ts, 0.5))
    ours = [g.copy() for g in gs]
    assert math.isclose(clip_grad_norm(ours, 0.5), ref, rel_tol=1e-12)
    for t, g in zip(ts, ours): np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-5)


def test_random_windows():
    ids = np.arange(100)
    x, y = random_windows(ids, 8, 5, rng=0)
    assert x.shape == y.shape == (5, 8)
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(x[:, 1:] - x[:, :-1], 1)
    starts = np.concatenate([random_windows(ids, 8, 500, rng=s)[0][:, 0] for s in range(4)])
    assert starts.min() == 0 and starts.max() == 91    # every start up to len - context - 1, as nanoGPT
    with pytest.raises(ValueError, match="longer than context=8"): random_windows(np.arange(8), 8, 2)


def test_generate_and_stream_loss():
    uniform = lambda x: np.zeros(x.shape + (4,))
    assert math.isclose(stream_loss(uniform, np.arange(40) % 4, 7, batch_size=2), math.log(4))
    out = generate(uniform, [[1, 2]], 10, rng=0)
    assert out.shape == (1, 12) and out[0, :2].tolist() == [1, 2]
    stop = generate(lambda x: 9.0 * np.eye(4)[np.full(x.shape, 3)], [0], 50, temperature=0, stop_id=3)
    assert stop.tolist() == [[0, 3]]
    with pytest.raises(ValueError, match="temperature"): generate(uniform, [0], 1, temperature=-1)


def test_clipped_step_with_model():
    net = Net([Embedding(5, 4, rng=0), Linear(4, 5, rng=0)])
    model = Model(net, SequenceCrossEntropy(), Adam(1e-2))
    x, y = random_windows(np.arange(200) % 5, 6, 8, rng=0)
    first, _ = clipped_step(model, x, y, 1.0)
    for _ in range(200): loss, norm = clipped_step(model, x, y, 1.0)
    assert loss < 0.1 < first and norm >= 0
    assert model.evaluate(x, y)["loss"] < 0.1     # Model casts the ids to float32; Embedding accepts whole numbers


# ---------------------------------------------------------------- RNN, LSTM, GRU
from tinynn_book.rnn import GRU, LSTM, RNN, char_lm

CELLS = {'rnn': lambda i, h: RNN(i, h, rng=0), 'relu': lambda i, h: RNN(i, h, 'relu', rng=0),
         'lstm': lambda i, h: LSTM(i, h, rng=0), 'gru': lambda i, h: GRU(i, h, rng=0)}
SHAPES = [(3, 5, 4, 6), (4, 7, 2, 3)]   # N, T, I, H: T >= 5, batch >= 3


@pytest.mark.parametrize('name', CELLS)
@pytest.mark.parametrize('N, T, I, H', SHAPES)
def test_recurrent_gradients(name, N, T, I, H):
    layer = CELLS[name](I, H)
    x = np.random.default_rng(0).normal(size=(N, T, I))
    errs = check_layer_grads(layer, x)
    assert set(errs) == {'x', 'w_ih', 'w_hh', 'b_ih', 'b_hh'} and max(errs.values()) < 1e-7, errs


@pytest.mark.parametrize('name', ['rnn', 'lstm', 'gru'])
def test_recurrent_gradient_of_initial_and_final_state(name):
    "Finite differences for h_0 (and c_0) with a gradient on the final state too"
    N, T, I, H = 3, 5, 2, 4
    layer = CELLS[name](I, H).astype(np.float64)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, T, I))
    s0 = [rng.normal(size=(N, H)) for _ in range(2 if name == 'lstm' else 1)]
    g, gs = rng.normal(size=(N, T, H)), [rng.normal(size=(N, H)) for _ in s0]
    state = lambda: tuple(s0) if name == 'lstm' else s0[0]
    def f():
        out = layer.forward(x, state())
        fin = layer.final_state if name == 'lstm' else (layer.final_state,)
        return float((out * g).sum() + sum((a * b).sum() for a, b in zip(fin, gs)))
    layer.forward(x, state()); layer.backward(g, tuple(gs) if name == 'lstm' else gs[0])
    analytic = layer.grad_initial_state if name == 'lstm' else (layer.grad_initial_state,)
    analytic = [a.copy() for a in analytic]
    for s, a in zip(s0, analytic): assert grad_check(f, s, a) < 1e-7


def _torch_twin(layer, torch):
    cls = {'RNN': torch.nn.RNN, 'LSTM': torch.nn.LSTM, 'GRU': torch.nn.GRU}[type(layer).__name__]
    kw = {'nonlinearity': layer.nonlinearity} if isinstance(layer, RNN) else {}
    twin = cls(layer.input_size, layer.hidden_size, batch_first=True, **kw).double()
    with torch.no_grad():
        for k in ('ih', 'hh'):
            getattr(twin, f'weight_{k}_l0').copy_(torch.from_numpy(layer.params[f'w_{k}'].T))
            getattr(twin, f'bias_{k}_l0').copy_(torch.from_numpy(layer.params[f'b_{k}']))
    return twin


@pytest.mark.parametrize('name', CELLS)
@pytest.mark.parametrize('given_state', [False, True], ids=['zero-state', 'given-state'])
def test_recurrent_matches_pytorch(name, given_state):
    torch = pytest.importorskip('torch')
    N, T, I, H = 3, 6, 4, 5
    layer = CELLS[name](I, H).astype(np.float64)
    twin = _torch_twin(layer, torch)
    rng = np.random.default_rng(2)
    x, g = rng.normal(size=(N, T, I)), rng.normal(size=(N, T, H))
    lstm = name == 'lstm'
    s0 = [rng.normal(size=(N, H)) for _ in range(2 if lstm else 1)] if given_state else None
    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(s[None], requires_grad=True) for s in s0] if given_state else None
    out_t, fin_t = twin(xt, (tuple(st) if lstm else st[0]) if given_state else None)
    gs = [rng.normal(size=(N, H)) for _ in range(2 if lstm else 1)]
    fin_t = fin_t if lstm else (fin_t,)
    ((out_t * torch.tensor(g)).sum() + sum((a[0] * torch.tensor(b)).sum() for a, b in zip(fin_t, gs))).backward()
    out = layer.forward(x, (tuple(s0) if lstm else s0[0]) if given_state else None)
    fin = layer.final_state if lstm else (layer.final_state,)
    dx = layer.backward(g, tuple(gs) if lstm else gs[0])
    np.testing.assert_allclose(out, out_t.detach().numpy(), atol=1e-12)
    for a, b in zip(fin, fin_t): np.testing.assert_allclose(a, b[0].detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-11)
    for k in ('ih', 'hh'):
        np.testing.assert_allclose(layer.grads[f'w_{k}'], getattr(twin, f'weight_{k}_l0').grad.numpy().T, atol=1e-11)
        np.testing.assert_allclose(layer.grads[f'b_{k}'], getattr(twin, f'bias_{k}_l0').grad.numpy(), atol=1e-11)
    if given_state:
        ours = layer.grad_initial_state if lstm else (layer.grad_initial_state,)
        for a, b in zip(ours, st): np.testing.assert_allclose(a, b.grad[0].numpy(), atol=1e-11)


def test_embedding_matches_pytorch():
    torch = pytest.importorskip('torch')
    emb = Embedding(6, 3, rng=0).astype(np.float64)
    ids = np.array([[0, 2, 2, 5], [5, 5, 1, 2], [3, 3, 3, 3]])
    twin = torch.nn.Embedding(6, 3).double()
    with torch.no_grad(): twin.weight.copy_(torch.from_numpy(emb.params['w']))
    g = np.random.default_rng(0).normal(size=(3, 4, 3))
    (twin(torch.from_numpy(ids)) * torch.tensor(g)).sum().backward()
    np.testing.assert_array_equal(emb(ids), twin(torch.from_numpy(ids)).detach().numpy())
    emb.backward(g)
    np.testing.assert_allclose(emb.grads['w'], twin.weight.grad.numpy(), atol=1e-13)


@pytest.mark.parametrize('name', CELLS)
def test_recurrent_bad_input(name):
    layer = CELLS[name](4, 3)
    who = repr(layer).replace('(', r'\(').replace(')', r'\)')
    with pytest.raises(ValueError, match=who + r" expected input of shape \(N, T, 4\), got \(2, 5, 3\)"): layer(np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, T, 4\), got \(5, 4\)"): layer(np.zeros((5, 4)))
    bad_state = (np.zeros((2, 3)), np.zeros((2, 3))) if name == 'lstm' else np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"initial state of shape \(3, 3\), got \(2, 3\)"): layer.forward(np.zeros((3, 5, 4)), bad_state)
    layer(np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=r"backward expected input of shape \(2, 5, 3\), got \(2, 4, 3\)"): layer.backward(np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="hidden_size"): type(layer)(4, 0)
    with pytest.raises(ValueError, match="nonlinearity"): RNN(4, 3, 'sigmoid')


@pytest.mark.parametrize('name', ['rnn', 'lstm', 'gru'])
def test_carried_state_and_reset(name):
    layer = CELLS[name](3, 4).astype(np.float64)
    x = np.random.default_rng(0).normal(size=(3, 10, 3))
    full = layer(x).copy()
    layer.carry = True
    np.testing.assert_raises(AssertionError, np.testing.assert_allclose, layer(x[:, :5]), full[:, :5])  # carried in
    layer.reset_state()
    parts = np.concatenate([layer(x[:, :5]).copy(), layer(x[:, 5:]).copy()], axis=1)
    np.testing.assert_allclose(parts, full, atol=1e-14)
    with pytest.raises(ValueError, match="reset_state"): layer(x[:2, :3])
    layer.reset_state()
    np.testing.assert_allclose(layer(x[:, :5]), full[:, :5], atol=1e-14)


@pytest.mark.parametrize('cell', ['rnn', 'lstm', 'gru'])
def test_char_lm_checkpoint_round_trip_and_dtype(cell, tmp_path):
    model = Model(char_lm(11, 4, 6, cell, rng=0), SequenceCrossEntropy(), Adam(1e-2))
    x, y = random_windows(np.arange(300) % 11, 7, 5, rng=0)
    for _ in range(3): clipped_step(model, x, y, 1.0)
    loaded = Model.load(model.save(tmp_path / 'lm.npz'))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    for k, p in model.net.params.items(): np.testing.assert_array_equal(loaded.net.params[k], p)
    assert model.predict(x).dtype == np.float32
    assert char_lm(11, 4, 6, cell, rng=0, dtype=np.float64)(x).dtype == np.float64


@pytest.mark.parametrize('cell', ['rnn', 'lstm', 'gru'])
def test_recurrent_on_the_standin_device(cell):
    from tinynn_book.backend import standin_device, StandInArray
    standin_device()
    x, y = random_windows(np.arange(300) % 11, 7, 5, rng=0)
    cpu = Model(char_lm(11, 4, 6, cell, rng=0), SequenceCrossEntropy(), Adam(1e-2))
    dev = Model(char_lm(11, 4, 6, cell, rng=0), SequenceCrossEntropy(), Adam(1e-2)).to('standin')
    for _ in range(2):
        a, b = clipped_step(cpu, x, y, 0.5), clipped_step(dev, to_device(x, 'standin'), to_device(y, 'standin'), 0.5)
        assert a == pytest.approx(b, rel=1e-6)
    assert all(isinstance(p, StandInArray) for p in dev.net.params.values())
    for k, p in cpu.net.params.items(): np.testing.assert_allclose(to_numpy(dev.net.params[k]), p, atol=1e-6)


try:
    from hypothesis import given, settings, strategies as st
except ImportError:   # hypothesis is a dev requirement; without it these checks skip
    given = None

if given is not None:
    @settings(max_examples=25, deadline=None)
    @given(name=st.sampled_from(['rnn', 'lstm', 'gru']), N=st.integers(1, 4), T=st.integers(1, 6),
           I=st.integers(1, 4), H=st.integers(1, 4), seed=st.integers(0, 2**16))
    def test_recurrent_gradients_hypothesis(name, N, T, I, H, seed):
        layer = {'rnn': RNN, 'lstm': LSTM, 'gru': GRU}[name](I, H, rng=seed)
        x = np.random.default_rng(seed).normal(size=(N, T, I))
        out = layer(x)
        assert out.shape == (N, T, H) and out.dtype == np.float64
        assert max(check_layer_grads(layer, x, rng=seed).values()) < 1e-6

    @settings(max_examples=25, deadline=None)
    @given(V=st.integers(1, 9), D=st.integers(1, 5), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
           seed=st.integers(0, 2**16))
    def test_embedding_hypothesis(V, D, shape, seed):
        ids = np.random.default_rng(seed).integers(0, V, shape)
        emb = Embedding(V, D, rng=seed).astype(np.float64)
        g = np.random.default_rng(seed + 1).normal(size=tuple(shape) + (D,))
        assert emb(ids).shape == tuple(shape) + (D,)
        emb.backward(g)
        expected = np.zeros((V, D))
        for i, row in zip(ids.reshape(-1), g.reshape(-1, D)): expected[i] += row
        np.testing.assert_allclose(emb.grads['w'], expected, atol=1e-12)
