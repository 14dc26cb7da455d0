"""Chapter 13 from the outside: data-parallel steps over threads and MPI ranks equal one worker's.

The MPI tests run real `mpiexec -n 2` jobs in subprocesses, each with a timeout, so a hung rank fails the test
instead of hanging the run. Without mpi4py (pip install -e ".[mpi]") they are skipped with that hint.
"""
import importlib.util, os, subprocess, sys, textwrap
import numpy as np
import pytest
from tinynn_book.parallel import (MPI_HINT, DataParallel, GradBuffer, SyncBatchNorm2d, ThreadParallel,
                                  blas_threads, data_parallel, import_mpi, mpi_run, mpi_world, ring_allreduce,
                                  shard_slices)
from tinynn_book.model import Model
from tinynn_book.losses import SoftmaxCrossEntropy
from tinynn_book.optim import Adam, SGD
from tinynn_book.mnist import mlp, lenet
from tinynn_book.cnn import resnet

HAS_MPI = importlib.util.find_spec('mpi4py') is not None
needs_mpi = pytest.mark.skipif(not HAS_MPI, reason=f"MPI tests need mpi4py and an MPI library: {MPI_HINT}")
TIMEOUT = 120  # seconds for a whole mpiexec job; a healthy one takes a few


def data(n=37, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28)).astype(dtype), rng.integers(0, 10, n)


def model(builder=lenet, dtype=np.float64, opt=Adam, **kw):
    return Model(builder(rng=0, dtype=dtype, **kw), SoftmaxCrossEntropy(), opt())


def max_diff(a, b): return max(np.abs(a.net.params[k] - b.net.params[k]).max() for k in a.net.params)


def test_shard_slices_cover_the_batch_evenly():
    for n, p in [(37, 3), (128, 2), (5, 2), (1, 4), (0, 2)]:
        parts = shard_slices(n, p)
        sizes = [s.stop - s.start for s in parts]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1 and parts[0].start == 0
    with pytest.raises(ValueError, match='num_workers'): shard_slices(4, 0)


@pytest.mark.parametrize('builder', [mlp, lenet], ids=['mlp', 'lenet'])
@pytest.mark.parametrize('workers', [2, 3])
def test_thread_mode_equals_one_worker(builder, workers):
    "Thread mode takes one worker's steps to float64 rounding, with an uneven split (37 examples)"
    x, y = data()
    one, team = model(builder), model(builder)
    with ThreadParallel(team, workers):
        for _ in range(3): assert abs(one.train_step(x, y) - team.train_step(x, y)) < 1e-12
    assert max_diff(one, team) < 1e-12


def test_thread_mode_first_gradient_is_the_batch_gradient():
    "After one step the reduced gradient is the whole batch's, to rounding; with plain SGD, so are the weights"
    x, y = data()
    one, team = model(mlp, opt=lambda: SGD(0.1)), model(mlp, opt=lambda: SGD(0.1))
    one.train_step(x, y)
    dp = ThreadParallel(team, 2)
    with dp: team.train_step(x, y)
    for (_, g), k in zip(dp.buffers[0].pairs(), one.net.params):
        np.testing.assert_allclose(g, one.net.grads[k], rtol=1e-10, atol=1e-15)
    assert max_diff(one, team) < 1e-14


def test_thread_mode_restores_blas_threads_and_the_model():
    team = model(mlp)
    before = blas_threads()
    with ThreadParallel(team, 2):
        if before is not None: assert blas_threads() == 1
        assert '_step' in team.__dict__
    assert blas_threads() == before and '_step' not in team.__dict__


def test_sync_batchnorm_threads_equal_one_worker():
    "The ResNet with SyncBatchNorm2d on 2 threads equals one worker; with per-shard statistics it does not"
    x, y = data(16)
    for norm, close in ((SyncBatchNorm2d, True), (None, False)):
        one, team = model(resnet, norm=norm), model(resnet, norm=norm)
        with ThreadParallel(team, 2):
            for _ in range(2): one.train_step(x, y); team.train_step(x, y)
        assert (max_diff(one, team) < 1e-9) == close
        if close:
            for k, v in one.net.state.items(): np.testing.assert_allclose(team.net.state[k], v, atol=1e-10)


def test_sync_batchnorm_refuses_a_worker_without_examples():
    team = model(resnet, norm=SyncBatchNorm2d)
    x, y = data(1)
    with ThreadParallel(team, 2), pytest.raises(ValueError, match='each of 2 workers needs an example'):
        team.train_step(x, y)


def test_thread_worker_error_reaches_the_caller():
    "A worker thread's exception is raised in the caller, not swallowed and not a hang"
    team = model(lenet)
    x, y = data(8)
    with ThreadParallel(team, 2), pytest.raises(ValueError, match='expected input'):
        team.train_step(x[:, :, :20], y)


def test_fewer_examples_than_workers():
    x, y = data(2)
    one, team = model(mlp), model(mlp)
    one.train_step(x, y)
    with ThreadParallel(team, 3): team.train_step(x, y)
    assert max_diff(one, team) < 1e-12


def test_fit_in_thread_mode_equals_fit():
    x, y = data(100)
    one, team = model(lenet), model(lenet)
    h1 = one.fit(x, y, 2, batch_size=32, progress=False, verbose=False)
    h2 = ThreadParallel(team, 2).fit(x, y, 2, batch_size=32, progress=False, verbose=False)
    np.testing.assert_allclose(h1['loss'], h2['loss'], rtol=1e-12)
    np.testing.assert_allclose(h1['accuracy'], h2['accuracy'])
    assert max_diff(one, team) < 1e-12


def test_grad_buffer_order_and_ring():
    net = lenet(rng=0)
    assert [id(p) for p, _ in GradBuffer(net).pairs()] == [id(p) for p in net.params.values()]
    rng = np.random.default_rng(0)
    for p in (1, 2, 3, 5):
        arrays = [rng.normal(size=(4, 3)) for _ in range(p)]
        for out in ring_allreduce(arrays): np.testing.assert_allclose(out, sum(arrays))


def test_data_parallel_chooses_by_environment(monkeypatch):
    for var in ('PMI_RANK', 'PMI_SIZE', 'OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE'): monkeypatch.delenv(var, raising=False)
    m = model(mlp)
    assert mpi_world() is None
    assert type(data_parallel(m)) is DataParallel and type(data_parallel(m, workers=2)) is ThreadParallel
    monkeypatch.setenv('PMI_RANK', '0'); monkeypatch.setenv('PMI_SIZE', '1')
    assert mpi_world() == (0, 1) and type(data_parallel(m)) is DataParallel   # one rank: no MPI needed
    monkeypatch.setenv('PMI_SIZE', '2')
    with pytest.raises(ValueError, match='threads per rank'): data_parallel(m, workers=2)


def test_import_mpi_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'mpi4py', None)   # as if not installed
    with pytest.raises(ImportError, match=r'pip install -e "\.\[mpi\]"'): import_mpi()


def test_importing_the_module_does_not_import_mpi():
    code = "import sys, tinynn_book.parallel; assert 'mpi4py' not in sys.modules, 'imported eagerly'"
    subprocess.run([sys.executable, '-c', code], check=True, timeout=120)


# ---- real MPI jobs -------------------------------------------------------------------------------------------

SCRIPT = textwrap.dedent('''
    import sys, numpy as np
    from tinynn_book.parallel import MPIParallel
    from tinynn_book.model import Model, Callback
    from tinynn_book.losses import SoftmaxCrossEntropy
    from tinynn_book.optim import Adam
    from tinynn_book.mnist import mlp, lenet
    name, dtype, out, mode, overlap = sys.argv[1:6]
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(0)
    x, y = rng.random((150, 1, 28, 28)).astype(dtype), rng.integers(0, 10, 150)
    class Fail(Callback):
        def on_epoch_end(self, model, history):
            if dp.rank == 1: raise RuntimeError("planted failure on rank 1")
    from mpi4py import MPI
    seed = MPI.COMM_WORLD.Get_rank()   # different initial weights per rank: the broadcast must fix them
    dp = MPIParallel(Model({'mlp': mlp, 'lenet': lenet}[name](rng=seed, dtype=dtype), SoftmaxCrossEntropy(), Adam()),
                     overlap=overlap == 'overlap', bucket_size=4096)
    dp.fit(x, y, 2, batch_size=64, progress=False, callbacks=[Fail()] if mode == 'fail' else [])
    dp.check_in_sync()
    dp.save(out)
    print(f"rank {dp.rank}: done", flush=True)
''')


def one_process(name, dtype):
    rng = np.random.default_rng(0)
    x, y = rng.random((150, 1, 28, 28)).astype(dtype), rng.integers(0, 10, 150)
    m = model({'mlp': mlp, 'lenet': lenet}[name], dtype=dtype)
    m.fit(x, y, 2, batch_size=64, progress=False, verbose=False)
    return m


def run_job(tmp_path, *args):
    script = tmp_path / 'job.py'
    script.write_text(SCRIPT)
    try: return mpi_run([sys.executable, script, *args], n=2, timeout=TIMEOUT)
    except subprocess.TimeoutExpired: pytest.fail(f"the MPI job hung for {TIMEOUT} s: {args}")


@needs_mpi
@pytest.mark.parametrize('name', ['mlp', 'lenet'])
@pytest.mark.parametrize('overlap', ['flat', 'overlap'])
def test_two_ranks_equal_one_process_float64(tmp_path, name, overlap):
    "2 ranks × 32 images = 1 process × 64, uneven last batch (150 = 2·64 + 22), to float64 rounding"
    out = tmp_path / 'model.npz'
    r = run_job(tmp_path, name, 'float64', out, 'ok', overlap)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('done') == 2 and r.stdout.count('epoch 2/2') == 1   # rank 0 alone prints epochs
    assert max_diff(one_process(name, 'float64'), Model.load(out)) < 1e-12


@needs_mpi
def test_two_ranks_float32_within_tolerance(tmp_path):
    out = tmp_path / 'model.npz'
    r = run_job(tmp_path, 'lenet', 'float32', out, 'ok', 'overlap')
    assert r.returncode == 0, r.stderr[-3000:]
    assert max_diff(one_process('lenet', 'float32'), Model.load(out)) < 1e-5


@needs_mpi
def test_a_failing_rank_aborts_the_job(tmp_path):
    "Rank 1 raises after epoch 1 while rank 0 goes on into an all-reduce: the job ends, with the reason"
    out = tmp_path / 'model.npz'
    r = run_job(tmp_path, 'mlp', 'float64', out, 'fail', 'overlap')
    assert r.returncode != 0
    assert 'rank 1 of 2 failed' in r.stderr and 'planted failure on rank 1' in r.stderr
    assert not out.exists()


@needs_mpi
def test_uneven_batches_and_a_rank_without_examples(tmp_path):
    "Batches of 3 on 2 ranks, and a last batch of 1 (one rank gets nothing), still equal one process"
    script = tmp_path / 'tiny.py'
    script.write_text(textwrap.dedent('''
        import sys, numpy as np
        from tinynn_book.parallel import MPIParallel
        from tinynn_book.model import Model
        from tinynn_book.losses import SoftmaxCrossEntropy
        from tinynn_book.optim import Adam
        from tinynn_book.mnist import mlp
        rng = np.random.default_rng(0)
        x, y = rng.random((7, 1, 28, 28)), rng.integers(0, 10, 7)
        dp = MPIParallel(Model(mlp(rng=0, dtype=np.float64), SoftmaxCrossEntropy(), Adam()))
        dp.fit(x, y, 2, batch_size=3, progress=False, verbose=False)
        dp.check_in_sync()
        dp.save(sys.argv[1])
    '''))
    out = tmp_path / 'tiny.npz'
    r = mpi_run([sys.executable, script, out], n=2, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    rng = np.random.default_rng(0)
    x, y = rng.random((7, 1, 28, 28)), rng.integers(0, 10, 7)
    one = model(mlp)
    one.fit(x, y, 2, batch_size=3, progress=False, verbose=False)
    assert max_diff(one, Model.load(out)) < 1e-12


# The start of a 2-rank job script: a float64 MLP on 64 random images, wrapped for data-parallel training as `dp`
MLP_JOB = textwrap.dedent('''
        from tinynn_book.parallel import data_parallel
        from tinynn_book.model import Model
        from tinynn_book.losses import SoftmaxCrossEntropy
        from tinynn_book.optim import Adam
        from tinynn_book.mnist import mlp
        rng = np.random.default_rng(0)
        x, y = rng.random((64, 1, 28, 28)), rng.integers(0, 10, 64)
        model = Model(mlp(rng=0, dtype=np.float64), SoftmaxCrossEntropy(), Adam())
        dp = data_parallel(model)
''')


@needs_mpi
def test_an_exception_inside_with_aborts_the_job(tmp_path):
    "What the command does (train_mnist inside `with dp:`): rank 1's exception ends both ranks, with the reason"
    script = tmp_path / 'with.py'
    script.write_text('import numpy as np\n' + MLP_JOB + textwrap.dedent('''
        with dp:
            model.fit(x, y, 1, batch_size=16, progress=False, verbose=False)
            if dp.rank == 1: raise OSError("cannot write the plot on rank 1")
            model.fit(x, y, 1, batch_size=16, progress=False, verbose=False)   # rank 0 waits in here
    '''))
    try: r = mpi_run([sys.executable, script], n=2, timeout=TIMEOUT)
    except subprocess.TimeoutExpired: pytest.fail("the job hung")
    assert r.returncode != 0 and 'rank 1 of 2 failed' in r.stderr and 'cannot write the plot' in r.stderr


@needs_mpi
def test_a_signal_after_the_last_step_stops_every_rank_when_with_ends(tmp_path):
    "SIGTERM to rank 1 after the last step (here: in the evaluation that follows) is not dropped, nor only rank 1's"
    script = tmp_path / 'late.py'
    script.write_text('import os, signal, numpy as np\n' + MLP_JOB + textwrap.dedent('''
        try:
            with dp:
                model.fit(x, y, 1, batch_size=16, progress=False, verbose=False)
                if dp.rank == 1: os.kill(os.getpid(), signal.SIGTERM)   # noted, not raised, inside `with dp:`
                model.evaluate(x, y)
            print(f"rank {dp.rank}: not stopped", flush=True)
        except KeyboardInterrupt as e:
            print(f"rank {dp.rank}: stopped by {type(e).__name__}", flush=True)
    '''))
    try: r = mpi_run([sys.executable, script], n=2, timeout=TIMEOUT)
    except subprocess.TimeoutExpired: pytest.fail("the job hung")
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'rank 1: stopped by Interrupted' in r.stdout and 'rank 0: stopped by KeyboardInterrupt' in r.stdout, r.stdout


def test_workers_refuse_a_model_on_another_device():
    "Workers exchange numpy buffers: a model on the (stand-in) gpu is refused by name, one worker is not"
    from tinynn_book.backend import standin_device
    standin_device()
    m = model(mlp).to('standin')
    with pytest.raises(ValueError, match=r"ThreadParallel: the model is on the standin.*model\.to\('cpu'\)"):
        ThreadParallel(m, 2)
    assert DataParallel(m).model is m
