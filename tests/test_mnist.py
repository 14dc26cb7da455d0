"""MNIST from the outside: IDX parsing, the loader's search order and download, the bundled sample, the builders, training.
The tinynn-mnist command is tested in tests/test_cli.py."""
import gzip, hashlib, os, shutil, subprocess, sys, urllib.error
from pathlib import Path
import numpy as np
import pytest
import tinynn_book.mnist as mnist
from tinynn_book.mnist import load_mnist, parse_idx, read_idx

NAMES = list(mnist.MNIST_FILES)

def idx_bytes(a, type_code=0x08):
    "An IDX file for the uint8 array `a`, written by hand from the format's definition"
    header = bytes([0, 0, type_code, a.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in a.shape)
    return header + a.astype('>u1').tobytes()

def fake_mnist(folder, num_train=20, num_test=10, gz=True):
    "Four small but valid MNIST-shaped IDX files in `folder`; returns {name: sha256 of the IDX bytes}"
    rng = np.random.default_rng(0)
    arrays = {'train-images-idx3-ubyte': rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
              'train-labels-idx1-ubyte': np.arange(num_train, dtype=np.uint8) % 10,
              't10k-images-idx3-ubyte': rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
              't10k-labels-idx1-ubyte': np.arange(num_test, dtype=np.uint8) % 10}
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, a in arrays.items():
        data = idx_bytes(a)
        sums[name] = hashlib.sha256(data).hexdigest()
        if gz: (folder/(name + '.gz')).write_bytes(gzip.compress(data))
        else: (folder/name).write_bytes(data)
    return sums

@pytest.fixture
def no_data(tmp_path, monkeypatch):
    "No $TINYNN_BOOK_DATA, an empty cache, and a mirror that does not exist"
    monkeypatch.delenv('TINYNN_BOOK_DATA', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path/'cache'))
    monkeypatch.setattr(mnist, 'MIRRORS', [(tmp_path/'no-such-mirror').as_uri()])
    return tmp_path

# --- IDX ------------------------------------------------------------------------------------------

def test_parse_handmade_idx(tmp_path):
    raw = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(parse_idx(raw), [[1, 2, 3], [4, 5, 6]])
    (tmp_path/'a').write_bytes(raw); (tmp_path/'a.gz').write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path/'a'), read_idx(tmp_path/'a.gz'))
    assert read_idx(tmp_path/'a').dtype == np.uint8

def test_parse_big_endian_int32():
    raw = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + (70000).to_bytes(4, 'big') + (-2).to_bytes(4, 'big', signed=True)
    np.testing.assert_array_equal(parse_idx(raw), [70000, -2])

@pytest.mark.parametrize('damage, message', [
    (lambda b: b[:-1], 'corrupt or truncated IDX file'),
    (lambda b: b + b'\0', 'corrupt or truncated IDX file'),
    (lambda b: b[:6], 'truncated IDX header'),
    (lambda b: b'\x01' + b[1:], 'not an IDX file'),
    (lambda b: b[:2] + b'\x42' + b[3:], 'not an IDX file'),
])
def test_corrupt_idx_raises_naming_the_file(tmp_path, damage, message):
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    path = tmp_path/'bad-labels'
    path.write_bytes(damage(good))
    with pytest.raises(ValueError, match=message) as e: read_idx(path)
    assert str(path) in str(e.value)

def test_truncated_gzip_raises_naming_the_file(tmp_path):
    path = tmp_path/'cut.gz'
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))[:-10])
    with pytest.raises(ValueError, match='corrupt or truncated gzip') as e: read_idx(path)
    assert str(path) in str(e.value)

def test_truncated_mnist_file_in_a_folder(tmp_path):
    fake_mnist(tmp_path, gz=False)
    f = tmp_path/'t10k-images-idx3-ubyte'
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match='t10k-images-idx3-ubyte: corrupt or truncated'): load_mnist(tmp_path)

def test_mismatched_labels(tmp_path):
    fake_mnist(tmp_path)
    (tmp_path/'t10k-labels-idx1-ubyte.gz').write_bytes(gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(ValueError, match=r'one label per image, shape \(10,\), got \(3,\)'): load_mnist(tmp_path)

def _idx_with_type(values, type_code, dtype):
    "A one-dimensional IDX file of `values` stored as `dtype` (big-endian) under `type_code`"
    values = np.asarray(values, dtype)
    return bytes([0, 0, type_code, 1]) + len(values).to_bytes(4, 'big') + values.astype(np.dtype(dtype).newbyteorder('>')).tobytes()

@pytest.mark.parametrize('type_code, dtype', [(0x0D, np.float32), (0x0E, np.float64)])
def test_float_label_file_is_refused_naming_it(tmp_path, type_code, dtype):
    "Issue 12.4: float labels loaded silently, NaN as INT64_MIN and 3.7 as 3"
    fake_mnist(tmp_path)
    labels = tmp_path/'t10k-labels-idx1-ubyte.gz'
    labels.write_bytes(gzip.compress(_idx_with_type([3.7, np.nan] + [1.0] * 8, type_code, dtype)))
    with pytest.raises(ValueError, match='expected IDX values of type uint8, int8, int16 or int32, its header says float') as e: load_mnist(tmp_path)
    assert str(labels) in str(e.value) and np.dtype(dtype).name in str(e.value)

def test_float_image_file_is_refused_naming_it(tmp_path):
    fake_mnist(tmp_path)
    images = tmp_path/'train-images-idx3-ubyte.gz'
    a = np.zeros((20, 28, 28), '>f4')
    images.write_bytes(gzip.compress(bytes([0, 0, 0x0D, 3]) + b''.join(int(d).to_bytes(4, 'big') for d in a.shape) + a.tobytes()))
    with pytest.raises(ValueError, match='expected IDX values of type uint8, its header says float32') as e: load_mnist(tmp_path)
    assert str(images) in str(e.value)

@pytest.mark.parametrize('type_code, dtype', [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32)])
def test_integer_label_files_load(tmp_path, type_code, dtype):
    fake_mnist(tmp_path)
    (tmp_path/'t10k-labels-idx1-ubyte.gz').write_bytes(gzip.compress(_idx_with_type(np.arange(10) % 10, type_code, dtype)))
    _, (xt, yt) = load_mnist(tmp_path)
    assert yt.dtype == np.int64 and yt.tolist() == list(range(10))

def test_out_of_range_labels_name_the_label_file(tmp_path):
    fake_mnist(tmp_path)
    labels = tmp_path/'t10k-labels-idx1-ubyte.gz'
    labels.write_bytes(gzip.compress(_idx_with_type([0, 1, 2, 3, -4, 5, 6, 7, 8, 9], 0x0C, np.int32)))
    with pytest.raises(ValueError, match=r'expected labels in 0\.\.9, got values in \[-4, 9\]') as e: load_mnist(tmp_path)
    assert str(labels) in str(e.value)

def _python(code):
    "Run `code` in a fresh Python that imports this package (not another install); returns the CompletedProcess"
    import tinynn_book
    env = dict(os.environ, PYTHONPATH=str(Path(tinynn_book.__file__).parent.parent), OPENBLAS_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, env=env)

def _gzip_zeros(path, header, num_zeros):
    "A gzip file: `header`, then `num_zeros` zero bytes, compressed a megabyte at a time"
    with gzip.open(path, 'wb') as f:
        f.write(header)
        for start in range(0, num_zeros, 1 << 20): f.write(bytes(min(1 << 20, num_zeros - start)))

def test_gzip_bomb_behind_a_small_header_costs_little_memory(tmp_path):
    "Issue 12.5: the whole file was gunzipped before its size was checked: 200 MB of zeros behind a 15 kB promise"
    fake_mnist(tmp_path)
    bomb = tmp_path/'train-images-idx3-ubyte.gz'
    good = gzip.decompress(bomb.read_bytes())  # header (20, 28, 28) and its 15 680 bytes
    _gzip_zeros(bomb, good, 200_000_000)
    assert bomb.stat().st_size < 1_000_000
    r = _python(f"""
from tinynn_book.mnist import load_mnist
def kb(key): return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key + ':'))
with open('/proc/self/clear_refs', 'w') as f: f.write('5')  # peak := now (a forked child starts with its parent's peak)
before = kb('VmRSS')
try: load_mnist({str(tmp_path)!r}); print('LOADED')
except ValueError as e: print('ERROR', e)
print('GROWTH', (kb('VmHWM') - before) / 1024)
""")
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'ERROR' in r.stdout and str(bomb) in r.stdout and 'corrupt or truncated IDX file' in r.stdout, r.stdout
    growth = float(r.stdout.split('GROWTH')[-1])
    assert growth < 50, f'peak memory grew by {growth:.0f} MB'   # the inflated file alone is 200 MB

def test_promise_larger_than_the_file_can_hold_is_refused_before_decompressing(tmp_path):
    liar = tmp_path/'liar.gz'
    liar.write_bytes(gzip.compress(bytes([0, 0, 0x08, 3]) + b''.join((100_000).to_bytes(4, 'big') for _ in range(3))))
    with pytest.raises(ValueError, match='more than the file can hold') as e: read_idx(liar)   # 10**15 bytes promised
    assert str(liar) in str(e.value)

def test_memory_error_never_escapes_load_mnist(tmp_path):
    "Issue 12.5: a header promising more than memory allows (here 314 MB under a 150 MB allowance) is a ValueError naming the file"
    fake_mnist(tmp_path)
    images = tmp_path/'train-images-idx3-ubyte.gz'
    _gzip_zeros(images, bytes([0, 0, 0x08, 3]) + b''.join(int(d).to_bytes(4, 'big') for d in (400_000, 28, 28)), 400_000 * 784)
    r = _python(f"""
import re, resource
from tinynn_book.mnist import load_mnist
vm = int(re.search(r'VmSize:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 150 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
try: load_mnist({str(tmp_path)!r}); print('LOADED')
except ValueError as e: print('ERROR', e)
""")
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert 'ERROR' in r.stdout and str(images) in r.stdout and 'more memory than is available' in r.stdout, r.stdout

# --- the loader's search order ---------------------------------------------------------------------

def test_sample_shapes_dtypes_ranges():
    (x, y), (xt, yt) = load_mnist(sample=True)
    assert x.shape == (6000, 1, 28, 28) and xt.shape == (1000, 1, 28, 28)
    assert x.dtype == xt.dtype == np.float32 and y.dtype == yt.dtype == np.int64
    assert x.min() == 0 and x.max() == 1 and 0 <= xt.min() and xt.max() <= 1
    assert np.bincount(y).tolist() == [600] * 10 and set(np.unique(yt)) == set(range(10))

def test_sample_file_is_small_and_documented():
    data = Path(mnist.__file__).parent/'data'
    assert (data/'mnist_sample.npz').stat().st_size < 2_000_000
    readme = (data/'README.md').read_text()
    for must in ('Yann LeCun', 'Corinna Cortes', 'Burges', 'Attribution-Share Alike 3.0'): assert must in readme

def test_explicit_path_raw_and_gz(tmp_path):
    fake_mnist(tmp_path/'gz'); fake_mnist(tmp_path/'raw', gz=False)
    (x, y), (xt, yt) = load_mnist(tmp_path/'gz')
    assert x.shape == (20, 1, 28, 28) and xt.shape == (10, 1, 28, 28) and y.dtype == np.int64 and x.max() <= 1
    np.testing.assert_array_equal(load_mnist(tmp_path/'raw')[0][0], x)

def test_env_var_is_used_and_path_wins(tmp_path, no_data, monkeypatch):
    fake_mnist(tmp_path/'env', num_train=30); fake_mnist(tmp_path/'arg', num_train=40)
    monkeypatch.setenv('TINYNN_BOOK_DATA', str(tmp_path/'env'))
    assert len(load_mnist()[0][0]) == 30
    assert len(load_mnist(tmp_path/'arg')[0][0]) == 40

def test_cache_is_used(no_data):
    fake_mnist(mnist.cache_dir(), num_train=12)
    assert len(load_mnist()[0][0]) == 12

def test_missing_data_says_where_to_put_it(no_data):
    with pytest.raises(FileNotFoundError) as e: load_mnist()
    msg = str(e.value)
    for must in ('TINYNN_BOOK_DATA', str(mnist.cache_dir()), 'train-images-idx3-ubyte', 'sample=True', 'download failed'):
        assert must in msg, (must, msg)

def test_missing_data_in_env_dir_is_an_error_not_a_download(no_data, monkeypatch):
    monkeypatch.setenv('TINYNN_BOOK_DATA', str(no_data/'empty'))
    monkeypatch.setattr(mnist, 'download_mnist', lambda *a, **k: pytest.fail('should not download'))
    with pytest.raises(FileNotFoundError, match=r'\$TINYNN_BOOK_DATA = .*empty lacks'): load_mnist()

def test_no_download_when_disabled(no_data, monkeypatch):
    monkeypatch.setattr(mnist, 'download_mnist', lambda *a, **k: pytest.fail('should not download'))
    with pytest.raises(FileNotFoundError, match='the cache'): load_mnist(download=False)

# --- download, with a fake mirror -------------------------------------------------------------------

def test_download_from_fake_mirror(no_data, monkeypatch):
    sums = fake_mnist(no_data/'mirror', num_train=25)
    monkeypatch.setattr(mnist, 'MNIST_FILES', sums)
    monkeypatch.setattr(mnist, 'MIRRORS', [(no_data/'mirror').as_uri()])
    (x, y), (xt, yt) = load_mnist(progress=False)
    assert x.shape == (25, 1, 28, 28) and xt.shape == (10, 1, 28, 28)
    assert sorted(p.name for p in mnist.cache_dir().iterdir()) == sorted(n + '.gz' for n in NAMES)
    np.testing.assert_array_equal(load_mnist(no_data/'mirror')[0][0], x)

def test_download_falls_back_to_next_mirror(no_data, monkeypatch):
    sums = fake_mnist(no_data/'mirror')
    monkeypatch.setattr(mnist, 'MNIST_FILES', sums)
    monkeypatch.setattr(mnist, 'MIRRORS', ['https://mirror.invalid/mnist/', (no_data/'mirror').as_uri()])
    real_urlopen, tried = mnist.urllib.request.urlopen, []
    def urlopen(url, *args, **kwargs):
        tried.append(url)
        if url.startswith('https://'): raise urllib.error.URLError('offline (fake)')
        return real_urlopen(url, *args, **kwargs)
    monkeypatch.setattr(mnist.urllib.request, 'urlopen', urlopen)
    assert load_mnist(progress=False)[0][0].shape == (20, 1, 28, 28)
    assert len(tried) == 8 and tried[0] == 'https://mirror.invalid/mnist/train-images-idx3-ubyte.gz'

def test_download_checksum_mismatch(no_data, monkeypatch):
    sums = fake_mnist(no_data/'mirror')
    sums['t10k-labels-idx1-ubyte'] = '0' * 64
    monkeypatch.setattr(mnist, 'MNIST_FILES', sums)
    monkeypatch.setattr(mnist, 'MIRRORS', [(no_data/'mirror').as_uri()])
    with pytest.raises(ValueError, match='t10k-labels-idx1-ubyte but it failed its check') as e: load_mnist(progress=False)
    assert '0' * 64 in str(e.value)
    left = sorted(p.name for p in mnist.cache_dir().iterdir())
    assert 't10k-labels-idx1-ubyte.gz' not in left and not any(n.endswith('.part') for n in left), left

def test_real_checksums_match_the_canonical_files():
    "The checksums that guard real downloads, checked against the data when it is here"
    folder = os.environ.get('TINYNN_BOOK_DATA')
    if not folder: pytest.skip('TINYNN_BOOK_DATA not set')
    for name, path in mnist.find_files(folder).items():
        assert hashlib.sha256(mnist.read_bytes(path)).hexdigest() == mnist.MNIST_FILES[name], name

def test_real_data_loads():
    folder = os.environ.get('TINYNN_BOOK_DATA')
    if not folder: pytest.skip('TINYNN_BOOK_DATA not set')
    (x, y), (xt, yt) = load_mnist()
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert y.dtype == np.int64 and x.dtype == np.float32 and x.max() == 1
    assert np.bincount(yt).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

# --- training and the command -------------------------------------------------------------------------

def test_mlp_fit_on_sample_reaches_90_percent():
    (x, y), (xt, yt) = load_mnist(sample=True)
    model = mnist.make_model('mlp', seed=0)
    model.fit(x, y, epochs=3, batch_size=128, seed=0, progress=False, verbose=False)
    assert model.evaluate(xt, yt)['accuracy'] >= 0.90

def test_checkpoint_round_trip_and_corruption(tmp_path):
    from tinynn_book.model import Model
    (x, y), (xt, yt) = load_mnist(sample=True)
    model = mnist.make_model('lenet', seed=0)
    model.fit(x[:512], y[:512], epochs=1, seed=0, progress=False, verbose=False)
    path = model.save(tmp_path/'lenet.npz')
    np.testing.assert_array_equal(Model.load(path).predict(xt[:200]), model.predict(xt[:200]))  # bit-identical
    (tmp_path/'cut.npz').write_bytes(Path(path).read_bytes()[:-300])
    with pytest.raises(ValueError, match='cut.npz'): Model.load(tmp_path/'cut.npz')

def test_lenet_trains_exactly_like_pytorch():
    "Same initial weights, same batches, float64: our LeNet with AdamW (decoupled weight decay) follows PyTorch's step for step"
    torch = pytest.importorskip('torch')
    nn = torch.nn
    (x, y), _ = load_mnist(sample=True)
    model = mnist.make_model('lenet', seed=0, weight_decay=0.1, max_shift=0)  # no augmentation: PyTorch's twin has none
    model.net.astype(np.float64)
    twin = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10)).double()
    ours = [layer for layer in model.net.layers if layer.params]
    theirs = [m for m in twin if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            w = a.params['w']
            b.weight.copy_(torch.from_numpy(w if w.ndim == 4 else w.T.copy())); b.bias.copy_(torch.from_numpy(a.params['b']))
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-3, weight_decay=0.1)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = rng.choice(len(x), 64, replace=False)
        xb, yb = x[idx].astype(np.float64), y[idx]
        loss = model.train_step(xb, yb)
        opt.zero_grad(); ref = nn.functional.cross_entropy(twin(torch.from_numpy(xb)), torch.from_numpy(yb)); ref.backward(); opt.step()
        assert abs(loss - ref.item()) < 1e-10
    for a, b in zip(ours, theirs):
        w = a.params['w'] if a.params['w'].ndim == 4 else a.params['w'].T
        np.testing.assert_allclose(w, b.weight.detach().numpy(), atol=1e-10)

def test_random_shift_is_training_only():
    (x, _), _ = load_mnist(sample=True)
    model = mnist.make_model('lenet', seed=0)
    assert type(model.net.layers[0]).__name__ == 'RandomShift'
    np.testing.assert_array_equal(model.predict(x[:8]), model.predict(x[:8]))  # evaluation mode: no shifts
    shift = mnist.RandomShift(2, rng=0)
    moved = shift(x[:64])
    assert moved.shape == (64, 1, 28, 28) and not np.array_equal(moved, x[:64])
    padded = np.pad(x[:64], ((0, 0), (0, 0), (2, 2), (2, 2)))
    every_shift = np.lib.stride_tricks.sliding_window_view(padded, (28, 28), axis=(2, 3))  # (64, 1, 5, 5, 28, 28)
    same = (every_shift == moved[:, :, None, None]).all(axis=(1, 4, 5))  # (64, 5, 5): which shift each image got
    assert same.any(axis=(1, 2)).all()  # every image is its original, moved by at most 2 pixels
    shift.training = False
    np.testing.assert_array_equal(shift(x[:64]), x[:64])

def test_lenet_shapes_and_parameter_count():
    net = mnist.lenet(rng=0)
    assert net(np.zeros((3, 1, 28, 28), np.float32)).shape == (3, 10)
    assert sum(p.size for p, _ in net.parameters()) == 61_706

def test_make_model_keywords_and_optimizer():
    "bench/bench_train.py calls make_model(name, LR, seed=0, weight_decay=0, max_shift=0): the bare net, AdamW without decay"
    from tinynn_book.optim import AdamW
    model = mnist.make_model('lenet', 1e-3, seed=0, weight_decay=0, max_shift=0)
    assert type(model.net.layers[0]).__name__ == 'Conv2D'
    assert isinstance(model.optimizer, AdamW) and model.optimizer.weight_decay == 0 and model.optimizer.lr == 1e-3
    default = mnist.make_model('mlp')
    assert type(default.net.layers[0]).__name__ == 'RandomShift' and default.optimizer.weight_decay == mnist.WEIGHT_DECAY

def test_checkpoint_keeps_adamw(tmp_path):
    from tinynn_book.model import Model
    model = mnist.make_model('mlp', seed=0, weight_decay=0.3)
    loaded = Model.load(model.save(tmp_path/'m.npz'))
    assert type(loaded.optimizer).__name__ == 'AdamW' and loaded.optimizer.weight_decay == 0.3

# --- the builders ---------------------------------------------------------------------------------------

def _old_mlp(rng):
    "The MLP exactly as chapter 6 built it before the builders took injected layers"
    from tinynn_book.layers import Dense, ReLU
    from tinynn_book.conv import Flatten
    from tinynn_book.model import Net
    return Net([Flatten(), Dense(784, 400, rng=rng), ReLU(), Dense(400, 100, rng=rng), ReLU(), Dense(100, 10, rng=rng)])

def _old_lenet(rng):
    from tinynn_book.layers import Dense, ReLU
    from tinynn_book.conv import Conv2D, MaxPool2D, Flatten
    from tinynn_book.model import Net
    return Net([Conv2D(1, 6, 5, padding=2, rng=rng), ReLU(), MaxPool2D(2), Conv2D(6, 16, 5, rng=rng), ReLU(), MaxPool2D(2),
                Flatten(), Dense(400, 120, rng=rng), ReLU(), Dense(120, 84, rng=rng), ReLU(), Dense(84, 10, rng=rng)])

@pytest.mark.parametrize('build, old', [(mnist.mlp, _old_mlp), (mnist.lenet, _old_lenet)])
def test_default_builders_give_the_same_nets(build, old):
    new, ref = build(rng=np.random.default_rng(5)), old(np.random.default_rng(5))
    assert [repr(layer) for layer in new.layers] == [repr(layer) for layer in ref.layers]
    assert new.params.keys() == ref.params.keys()
    for k in ref.params: np.testing.assert_array_equal(new.params[k], ref.params[k])

def _identity_layer():
    from tinynn_book.layers import Layer
    class Mark(Layer):
        "Identity stand-in for chapter 7's layers"
        def __init__(self, num_features=None): super().__init__(); self.num_features = num_features
        def forward(self, x): return x
        def backward(self, grad): return grad
    return Mark

def test_builders_inject_norm_and_dropout():
    Mark = _identity_layer()
    net = mnist.mlp(rng=0, norm=Mark, dropout=Mark)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ['Flatten', 'Dense', 'Mark', 'ReLU', 'Mark', 'Dense', 'Mark', 'ReLU', 'Mark', 'Dense']
    assert [l.num_features for l in net.layers if isinstance(l, Mark)] == [400, None, 100, None]
    net = mnist.lenet(rng=0, norm2d=Mark, norm1d=Mark, dropout=Mark, dtype=np.float64)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ['Conv2D', 'Mark', 'ReLU', 'MaxPool2D', 'Conv2D', 'Mark', 'ReLU', 'MaxPool2D', 'Flatten',
                     'Dense', 'Mark', 'ReLU', 'Mark', 'Dense', 'Mark', 'ReLU', 'Mark', 'Dense']
    assert [l.num_features for l in net.layers if isinstance(l, Mark)] == [6, 16, 120, None, 84, None]
    plain = mnist.lenet(rng=0, dtype=np.float64)
    for a, b in zip(net.params.values(), plain.params.values()): np.testing.assert_array_equal(a, b)  # same weights
    x = np.random.default_rng(0).random((2, 1, 28, 28))
    np.testing.assert_array_equal(net(x), plain(x))
    model = mnist.make_model('mlp', seed=0, norm=Mark)  # make_model passes builder options on
    assert sum(isinstance(l, Mark) for l in model.net.layers) == 2

# --- train_mnist: validation from the training set ------------------------------------------------------

def _recording_model():
    model = mnist.make_model('mlp', seed=0)
    calls = {}
    def fit(x, y, epochs, batch_size=128, validation_data=None, **kwargs):
        calls.update(x=x, y=y, epochs=epochs, validation_data=validation_data, **kwargs); return 'history'
    model.fit = fit
    return model, calls

def test_train_mnist_validates_on_the_end_of_the_training_set():
    (x, y), (xt, yt) = load_mnist(sample=True)
    model, calls = _recording_model()
    assert mnist.train_mnist(model, ((x, y), (xt, yt)), 2, val_size=1000) == 'history'
    np.testing.assert_array_equal(calls['x'], x[:5000]); np.testing.assert_array_equal(calls['y'], y[:5000])
    xv, yv = calls['validation_data']
    np.testing.assert_array_equal(xv, x[5000:]); np.testing.assert_array_equal(yv, y[5000:])  # never the test set
    mnist.train_mnist(model, (x, y), 1)  # (x, y) works too; default: a twelfth
    assert len(calls['x']) == 5500 and len(calls['validation_data'][0]) == 500
    mnist.train_mnist(model, (x, y), 1, val_size=0)
    assert len(calls['x']) == 6000 and calls['validation_data'] is None
    for bad in (-1, 6000, 2.5):
        with pytest.raises(ValueError, match='val_size'): mnist.train_mnist(model, (x, y), 1, val_size=bad)

def test_train_mnist_history_has_validation():
    (x, y), _ = load_mnist(sample=True)
    model = mnist.make_model('mlp', seed=0)
    history = mnist.train_mnist(model, (x[:1200], y[:1200]), 1, val_size=200, progress=False, verbose=False)
    assert history.epochs == 1 and history['val_accuracy'][0] is not None


# ---- issue 20.3: empty splits are refused when loading, naming the file ----
@pytest.mark.parametrize('num_train, num_test, empty', [(0, 10, 'train-images-idx3-ubyte'), (20, 0, 't10k-images-idx3-ubyte')])
def test_an_idx_file_with_no_images_is_refused_naming_it(tmp_path, num_train, num_test, empty):
    "Issue 20.3: IDX files with 0 test images loaded; the command trained, then crashed in evaluate and lost the checkpoint"
    fake_mnist(tmp_path, num_train=num_train, num_test=num_test)
    with pytest.raises(ValueError, match='holds no images') as e: load_mnist(tmp_path)
    assert empty in str(e.value)
