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
