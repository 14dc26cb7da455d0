"Chapter 12 (tinynn_book.transformer) from the outside: PyTorch parity in float64, the mask, the cache, bad input."
import math
import numpy as np
import pytest
from tinynn_book.model import Model
from tinynn_book.rnn import SequenceCrossEntropy
from tinynn_book.transformer import (Block, CausalSelfAttention, GPT, GPTAdamW, PositionalEmbedding, TanhGELU,
                                     masked_softmax, sample_logits)
from tinynn_book.rnn import clipped_step

def _spread(net, scale=0.3, seed=1):
    r = np.random.default_rng(seed)
    for p in net.params.values(): p += scale * r.normal(size=p.shape)
    return net

def _rel(a, b): return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)

# --- PyTorch twins, float64 -------------------------------------------------------------------------------------

def _torch_attention(torch, F, p, x, H, causal):
    N, T, D = x.shape
    q, k, v = F.linear(x, p['w_qkv'].T, p['b_qkv']).split(D, dim=2)
    q, k, v = (a.view(N, T, H, D // H).transpose(1, 2) for a in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return F.linear(y.transpose(1, 2).reshape(N, T, D), p['w_out'].T, p['b_out'])

def _torch_block(torch, F, p, x, H, causal, prefix=''):
    "Our Block's parameter names: 0.0.{0: LN, 1: attention}, 1.0.{0: LN, 1: fc, 3: proj}"
    g = lambda k: p[prefix + k]
    D = x.shape[-1]
    ln = lambda z, i: F.layer_norm(z, (D,), g(f'{i}.0.0.gamma'), g(f'{i}.0.0.beta'), 1e-5)
    att = {k: g(f'0.0.1.{k}') for k in ('w_qkv', 'b_qkv', 'w_out', 'b_out')}
    x = x + _torch_attention(torch, F, att, ln(x, 0), H, causal)
    h = F.gelu(ln(x, 1) @ g('1.0.1.w') + g('1.0.1.b'), approximate='tanh')
    return x + h @ g('1.0.3.w') + g('1.0.3.b')

def _leaves(torch, net):
    return {k: torch.tensor(v, requires_grad=True) for k, v in net.params.items()}

@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('T, H', [(1, 1), (1, 4), (7, 1), (7, 2), (16, 4)])
def test_attention_matches_pytorch(causal, T, H):
    torch = pytest.importorskip('torch'); F = torch.nn.functional
    layer = _spread(CausalSelfAttention(16, H, causal, rng=0, dtype=np.float64))
    rng = np.random.default_rng(2)
    x, g = rng.normal(size=(3, T, 16)), rng.normal(size=(3, T, 16))
    p = _leaves(torch, layer); xt = torch.tensor(x, requires_grad=True)
    out = _torch_attention(torch, F, p, xt, H, causal); out.backward(torch.tensor(g))
    assert _rel(out.detach().numpy(), layer(x)) < 1e-13
    assert _rel(xt.grad.numpy(), layer.backward(g)) < 1e-12
    for k in layer.params: assert _rel(p[k].grad.numpy(), layer.grads[k]) < 1e-12, k

@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('T', [1, 8])
def test_block_matches_pytorch(causal, T):
    torch = pytest.importorskip('torch'); F = torch.nn.functional
    block = _spread(Block(8, 2, n_layers=2, causal=causal, rng=0, dtype=np.float64))
    rng = np.random.default_rng(3)
    x, g = rng.normal(size=(2, T, 8)), rng.normal(size=(2, T, 8))
    p = _leaves(torch, block); xt = torch.tensor(x, requires_grad=True)
    out = _torch_block(torch, F, p, xt, 2, causal); out.backward(torch.tensor(g))
    assert _rel(out.detach().numpy(), block(x)) < 1e-13
    assert _rel(xt.grad.numpy(), block.backward(g)) < 1e-12
    for k in block.params: assert _rel(p[k].grad.numpy(), block.grads[k]) < 1e-12, k

@pytest.mark.parametrize('T', [1, 6])
def test_gpt_matches_pytorch_loss_and_every_gradient(T):
    torch = pytest.importorskip('torch'); F = torch.nn.functional
    gpt = _spread(GPT(9, 6, 8, 2, 2, rng=0, dtype=np.float64), 0.2)
    rng = np.random.default_rng(4)
    ids, targets = rng.integers(0, 9, (3, T)), rng.integers(0, 9, (3, T))
    p = _leaves(torch, gpt)
    x = p['0.w'][torch.tensor(ids)] + p['1.w'][:T]
    for i in range(2): x = _torch_block(torch, F, p, x, 2, True, prefix=f'{2 + i}.')
    logits = F.layer_norm(x, (8,), p['4.gamma'], p['4.beta'], 1e-5) @ p['5.w'] + p['5.b']
    loss = F.cross_entropy(logits.reshape(-1, 9), torch.tensor(targets).reshape(-1)); loss.backward()
    ce = SequenceCrossEntropy()
    ours = gpt(ids)
    assert _rel(logits.detach().numpy(), ours) < 1e-13
    assert abs(ce.loss(ours, targets) - loss.item()) < 1e-12
    gpt.backward(ce.grad(ours, targets))
    for k in gpt.params: assert _rel(p[k].grad.numpy(), gpt.grads[k]) < 1e-11, k

def test_gelu_matches_pytorch():
    torch = pytest.importorskip('torch')
    x = np.linspace(-6, 6, 101)[None]
    xt = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.gelu(xt, approximate='tanh'); y.sum().backward()
    layer = TanhGELU()
    assert np.allclose(layer(x), y.detach().numpy(), atol=1e-14, rtol=0)
    assert np.allclose(layer.backward(np.ones_like(x)), xt.grad.numpy(), atol=1e-14, rtol=0)

# --- the mask, the cache, the optimizer ------------------------------------------------------------------------

def test_no_position_attends_to_the_future():
    gpt = _spread(GPT(11, 10, 16, 4, 2, rng=0, dtype=np.float64), 0.1)
    ids = np.random.default_rng(0).integers(0, 11, (2, 10))
    base = gpt(ids)
    for t in range(10):
        other = ids.copy(); other[:, t] = (other[:, t] + 3) % 11
        changed = np.abs(gpt(other) - base).max((0, 2)) > 0
        assert not changed[:t].any() and changed[t:].all(), t

def test_masked_softmax_has_no_nan_and_handles_large_float32_scores():
    s = np.array([[1e30, -1e30], [3e38, 3e38]], np.float32)[None]
    p = masked_softmax(s)
    assert p.dtype == np.float32 and np.isfinite(p).all() and p[0, 0, 1] == 0

def test_cache_equals_recompute_and_samples_are_the_same():
    gpt = _spread(GPT(13, 12, 16, 2, 3, rng=1, dtype=np.float64), 0.1)
    ids = np.random.default_rng(5).integers(0, 13, (3, 12))
    caches = gpt.new_caches(3)
    first = gpt.forward_cached(ids[:, :5], caches)        # a prompt of 5, then one at a time
    rest = [gpt.forward_cached(ids[:, t:t + 1], caches) for t in range(5, 12)]
    assert np.abs(np.concatenate([first, *rest], 1) - gpt(ids)).max() < 1e-12
    a = gpt.generate(ids[:, :2], 25, temperature=0.7, top_k=4, rng=3)
    b = gpt.generate(ids[:, :2], 25, temperature=0.7, top_k=4, rng=3, cache=False)
    assert a.shape == (3, 27) and np.array_equal(a, b)

def test_weight_decay_only_on_matrices():
    w, b = np.ones((3, 2)), np.ones(2)
    GPTAdamW(lr=0.1, weight_decay=0.2).step([(w, np.zeros_like(w)), (b, np.zeros_like(b))])
    assert np.allclose(w, 0.98) and np.array_equal(b, np.ones(2))

# --- bad input, checkpoints, dtypes, devices ---------------------------------------------------------------------

def test_bad_input_is_refused_with_a_clear_message():
    g = GPT(10, 8, 16, 4, 1, rng=0)
    with pytest.raises(ValueError, match=r'at most 8 positions \(its context\), got a sequence of 9'):
        g(np.zeros((1, 9), np.int64))
    with pytest.raises(ValueError, match='d_model=10 and n_heads=4'): CausalSelfAttention(10, 4)
    with pytest.raises(ValueError, match=r'token ids in \[0, 10\)'): g(np.array([[3, 10]]))
    with pytest.raises(ValueError, match=r'token ids in \[0, 10\)'): g(np.array([[-1, 0]]))
    for t in (0, -1.0, float('nan'), float('inf')):
        with pytest.raises(ValueError, match='temperature > 0'): sample_logits(np.zeros((1, 3)), t)
    for k in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match='top_k'): sample_logits(np.zeros((1, 3)), 1.0, k)
    with pytest.raises(ValueError, match='its context'): PositionalEmbedding(4, 8)(np.zeros((1, 5, 8)))

def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    m = Model(GPT(10, 8, 16, 4, 2, dropout=0.1, rng=2), SequenceCrossEntropy(), GPTAdamW(weight_decay=0.1))
    rng = np.random.default_rng(0)
    clipped_step(m, rng.integers(0, 10, (2, 8)), rng.integers(0, 10, (2, 8)), 1.0)
    back = Model.load(m.save(tmp_path / 'g.npz'))
    assert back.net.config() == m.net.config() and type(back.optimizer) is GPTAdamW
    for k, p in m.net.params.items(): assert back.net.params[k].tobytes() == p.tobytes(), k
    m.net.eval(); back.net.eval()
    probe = rng.integers(0, 10, (3, 8))
    assert np.array_equal(m.net(probe), back.net(probe))

@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_dtype_in_is_dtype_out(dtype):
    g = GPT(10, 8, 16, 4, 1, rng=0, dtype=dtype)
    assert g(np.zeros((2, 8), np.int64)).dtype == dtype
    a = CausalSelfAttention(8, 2, dtype=dtype)
    assert a(np.zeros((1, 3, 8), dtype)).dtype == dtype and a.backward(np.ones((1, 3, 8), dtype)).dtype == dtype

def test_a_training_step_on_the_standin_device():
    from tinynn_book.backend import StandInArray, standin_device
    standin_device()
    m = Model(GPT(10, 8, 16, 4, 2, rng=0), SequenceCrossEntropy(), GPTAdamW()).to('standin')
    rng = np.random.default_rng(0)
    before = {k: np.array(p) for k, p in m.net.params.items()}
    loss, norm = clipped_step(m, rng.integers(0, 10, (2, 8)), rng.integers(0, 10, (2, 8)), 1.0)
    assert math.isfinite(loss) and math.isfinite(norm)
    assert all(isinstance(p, StandInArray) for p in m.net.params.values())
    assert any(not np.array_equal(np.asarray(p), before[k]) for k, p in m.net.params.items())
