"MNIST from the outside: IDX parsing, the loader's search order and download, the bundled sample, training, the command."
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
    "Same initial weights, same batches, float64: our LeNet with Adam and weight decay follows PyTorch's step for step"
    torch = pytest.importorskip('torch')
    nn = torch.nn
    (x, y), _ = load_mnist(sample=True)
    model = mnist.make_model('lenet', seed=0, weight_decay=5e-4, max_shift=0)  # no augmentation: PyTorch's twin has none
    model.net.astype(np.float64)
    twin = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10)).double()
    ours = [layer for layer in model.net.layers if layer.params]
    theirs = [m for m in twin if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            w = a.params['w']
            b.weight.copy_(torch.from_numpy(w if w.ndim == 4 else w.T.copy())); b.bias.copy_(torch.from_numpy(a.params['b']))
    opt = torch.optim.Adam(twin.parameters(), lr=1e-3, weight_decay=5e-4)
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

def _command(*args, env=None):
    exe = shutil.which('tinynn-mnist')
    cmd = [exe] if exe else [sys.executable, '-c', 'import sys; from tinynn_book.mnist import main; sys.exit(main())']
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=600)

def _offline_env(tmp_path):
    "A fresh user: no data variable, an empty home and cache"
    env = {k: v for k, v in os.environ.items() if k != 'TINYNN_BOOK_DATA'}
    env.update(HOME=str(tmp_path/'home'), XDG_CACHE_HOME=str(tmp_path/'cache'))
    env.pop('MPLBACKEND', None)  # the command must pick a non-interactive backend itself
    return env

def test_command_on_sample_writes_checkpoint_and_plot(tmp_path):
    ckpt, png = tmp_path/'m.npz', tmp_path/'c.png'
    r = _command('--sample', '--epochs', '1', '--save', str(ckpt), '--plot', str(png), env=_offline_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert 'test accuracy' in r.stdout and 'Dense' in r.stdout
    assert png.read_bytes()[:4] == b'\x89PNG'
    from tinynn_book.model import Model
    _, (xt, yt) = load_mnist(sample=True)
    assert Model.load(ckpt).evaluate(xt, yt)['accuracy'] >= 0.75  # the checkpoint is the trained MLP

def test_command_bad_arguments_exit_2(tmp_path):
    for bad in (['--epochs', '0'], ['--model', 'vgg'], ['--batch-size', 'x'], ['--sample', '--data', str(tmp_path)]):
        r = _command(*bad, env=_offline_env(tmp_path))
        assert r.returncode == 2 and 'error' in r.stderr, (bad, r.stderr)

def test_command_missing_data_exit_1(tmp_path):
    r = _command('--data', str(tmp_path), '--epochs', '1', env=_offline_env(tmp_path))
    assert r.returncode == 1 and 'MNIST not found' in r.stderr and 'TINYNN_BOOK_DATA' in r.stderr, r.stderr
