"""Tasks: shapes match the spec, streams are deterministic and full, each task's data
obeys its definition, torchvision sets load from files in their real on-disk format,
and bad knobs or missing data fail with one line naming the key."""

import hashlib
import itertools
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchvision import datasets

from gradlab.components import option, options
from gradlab.errors import ConfigError
from gradlab.tasks import build_task

TASKS = [t for t in options("task") if t not in ("custom", "dataset")]  # dataset: tests/test_custom.py

CONF = Path(__file__).resolve().parents[1] / "conf" / "task"
VISION = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx-ubyte file: zero bytes, type 0x08 (ubyte), rank, then big-endian sizes and data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_pickle(path: Path, obj) -> str:
    path.write_bytes(pickle.dumps(obj))
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_mnist(root: Path, cls, n_train=20, n_test=10) -> None:
    """Tiny uncompressed idx files where torchvision's MNIST classes look for them."""
    raw = root / cls.__name__ / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def fake_cifar(root: Path, monkeypatch, per_batch=4, n_test=10) -> None:
    """Tiny CIFAR-10 python pickles; torchvision's md5 table is pointed at them."""
    folder = root / datasets.CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(name, n):
        images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # rows of R, G, B planes
        labels = [int(v) for v in rng.integers(0, 10, n)]
        return [name, write_pickle(folder / name, {"data": images, "labels": labels})]

    monkeypatch.setattr(
        datasets.CIFAR10, "train_list", [batch(f"data_batch_{i}", per_batch) for i in range(1, 6)]
    )
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [batch("test_batch", n_test)])
    md5 = write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    monkeypatch.setattr(datasets.CIFAR10, "meta", {**datasets.CIFAR10.meta, "md5": md5})


# Small settings per task, so that the whole file stays fast.
SMALL = {
    "adding": {"length": 12, "eval_size": 1500},
    "copy": {"length": 7, "eval_size": 300},
    "temporal_order": {"length": 20, "eval_size": 300},
    "digits": {},
    "text": {"seq_len": 16, "max_bytes": 20_000, "eval_size": 40},
    "regression": {"n_samples": 10, "features": 3},
    "mnist": {"download": False},
    "fashion_mnist": {"download": False},
    "cifar10": {"download": False},
}


@pytest.fixture
def make(tmp_path, monkeypatch):
    """Build, prepare and load a task on the CPU; torchvision sets get tiny fake files."""

    def make(name, **knobs):
        knobs = {**SMALL[name], **knobs}
        if name in ("mnist", "fashion_mnist"):
            fake_mnist(tmp_path, VISION[name])
            knobs["root"] = str(tmp_path)
        if name == "cifar10":
            fake_cifar(tmp_path, monkeypatch)
            knobs["root"] = str(tmp_path)
        task = build_task(option("task", name, **knobs))
        task.prepare()
        task.load("cpu")
        return task

    return make


def check_batch(spec, x, y, n):
    assert x.shape == (n, *spec.shape)
    if spec.input == "tokens":
        assert x.dtype == torch.int64 and 0 <= x.min() and x.max() < spec.vocab
    else:
        assert x.dtype == torch.float32
    if spec.output == "regression":
        assert y.dtype == torch.float32 and y.shape == (n, 1)
    else:
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() < spec.n_out
        assert y.shape == ((n,) if spec.output == "classes" else (n, spec.shape[0]))


def take(task, n, seed, k=3):
    return list(itertools.islice(task.batches(n, seed), k))


@pytest.mark.parametrize("name", TASKS)
def test_batches_match_spec_and_are_deterministic(make, name):
    task = make(name)
    first, again, other = take(task, 7, seed=1), take(task, 7, seed=1), take(task, 7, seed=2)
    for x, y in first:
        check_batch(task.spec, x, y, 7)  # every batch full, even across epoch ends
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))
    evals = task.eval_batches()
    assert evals and all(len(y) <= 1000 for _, y in evals)
    for x, y in evals:
        check_batch(task.spec, x, y, len(y))


@pytest.mark.parametrize("name", ["adding", "copy", "temporal_order", "digits", "regression"])
def test_eval_set_is_fixed_and_independent_of_the_run(make, name):
    a, b = make(name), make(name)
    next(a.batches(5, seed=3))
    for (xa, ya), (xb, yb) in zip(a.eval_batches(), b.eval_batches()):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_stored_stream_visits_every_sample_once_per_epoch(make):
    task = make("regression", n_samples=10)
    data = task.eval_batches()[0][0]  # eval set is the training set here
    drawn = torch.cat([x for x, _ in take(task, 4, seed=0, k=5)])  # 20 samples = 2 epochs
    rows = [int((data == row).all(1).nonzero()) for row in drawn]
    assert sorted(rows[:10]) == sorted(rows[10:]) == list(range(10))


def test_adding_target_is_sum_of_the_two_marked_values(make):
    task = make("adding", length=13)
    x, y = next(task.batches(500, seed=0))
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) == {0.0, 1.0} and (markers.sum(1) == 2).all()
    half = 13 // 2
    assert (markers[:, :half].sum(1) == 1).all() and (markers[:, half:].sum(1) == 1).all()
    assert torch.allclose(y.squeeze(1), (values * markers).sum(1))
    assert math.isclose(task.spec.baseline, 1 / 6)


def test_copy_layout(make):
    T = 7
    task = make("copy", length=T)
    x, y = next(task.batches(200, seed=0))
    symbols = x[:, :10]
    assert ((symbols >= 1) & (symbols <= 8)).all()
    assert (
        (x[:, 10 : 10 + T - 1] == 0).all() and (x[:, 10 + T - 1] == 9).all() and (x[:, T + 10 :] == 0).all()
    )
    assert (y[:, : T + 10] == 0).all() and torch.equal(y[:, T + 10 :], symbols)
    assert math.isclose(task.spec.baseline, 10 * math.log(8) / (T + 20))


def test_temporal_order_class_and_positions(make):
    T = 30
    task = make("temporal_order", length=T)
    x, y = next(task.batches(500, seed=0))
    relevant = x < 2  # A=0, B=1; distractors are 2..5
    assert (relevant.sum(1) == 2).all()
    first, second = relevant.nonzero()[:, 1].view(-1, 2).unbind(1)
    assert ((first >= 0.1 * T) & (first < 0.2 * T)).all() and ((second >= 0.5 * T) & (second < 0.6 * T)).all()
    rows = torch.arange(len(y))
    assert torch.equal(y, 2 * x[rows, first] + x[rows, second])
    assert y.bincount(minlength=4).min() > 0


def test_digits_split(make):
    task = make("digits", test_fraction=0.25)
    test_y = torch.cat([y for _, y in task.eval_batches()])
    assert len(test_y) == round(0.25 * 1797) and len(task.train[1]) == 1797 - len(test_y)
    assert set(test_y.tolist()) == set(range(10))
    assert 0 <= task.train[0].min() and task.train[0].max() <= 1


def test_digits_are_scikit_learns(make):
    from sklearn.datasets import load_digits

    from gradlab.tasks.digits import read

    pixels, labels = read()
    expected_pixels, expected_labels = load_digits(return_X_y=True)
    assert (pixels == expected_pixels).all() and (labels == expected_labels).all() and len(labels) == 1797


def corpus_windows_hold(task, corpus: bytes, batches):
    """Every window is a slice of the corpus and its target is the input shifted by one."""
    for x, y in batches:
        assert torch.equal(x[:, 1:], y[:, :-1])
        for xi, yi in zip(x, y):
            assert bytes(xi.tolist()) + bytes([int(yi[-1])]) in corpus


def test_text_reads_a_file(make, tmp_path):
    corpus = bytes(range(256)) * 8
    (tmp_path / "one.bin").write_bytes(corpus)
    task = make("text", path=str(tmp_path / "one.bin"), seq_len=8, eval_size=20)
    corpus_windows_hold(task, corpus[: int(len(corpus) * 0.9)], take(task, 64, seed=0))
    x, y = task.eval_batches()[0]
    assert len(y) == 20
    tail = corpus[int(len(corpus) * 0.9) :]
    corpus_windows_hold(task, tail, [(x, y)])
    assert bytes(x[0].tolist()) == tail[:8] and bytes(y[-1].tolist()) == tail[-8:]  # spans the tail


def test_text_reads_a_folder_in_sorted_order_up_to_max_bytes(make, tmp_path):
    (tmp_path / "b.txt").write_bytes(b"B" * 300)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "z.txt").write_bytes(b"A" * 300)  # "a/z.txt" sorts before "b.txt"
    task = make("text", path=str(tmp_path), seq_len=10, max_bytes=400, eval_fraction=0.25)
    corpus = b"A" * 300 + b"B" * 100
    corpus_windows_hold(task, corpus[:300], take(task, 200, seed=0))
    corpus_windows_hold(task, corpus[300:], task.eval_batches())


def test_text_default_corpus_is_the_standard_library(make):
    task = make("text", path=None)
    assert b"import" in bytes(task.data.tolist())


@pytest.mark.parametrize("path", ["missing.txt", "empty_dir"])
def test_text_missing_or_empty_path_names_it(tmp_path, path):
    (tmp_path / "empty_dir").mkdir()
    task = build_task(option("task", "text", path=str(tmp_path / path)))
    with pytest.raises(ConfigError, match=f"^task.path=.*{path}"):
        task.prepare()


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_vision_loads_real_format_standardised(make, name):
    task = make(name)
    x, y = task.train
    assert len(y) == 20 and len(task.eval_batches()[0][1]) == 10
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-5)


@pytest.mark.parametrize("download", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_vision_missing_data_names_folder_and_files(tmp_path, monkeypatch, name, download):
    def offline(self):
        raise OSError("no network")

    monkeypatch.setattr(VISION[name], "download", offline)
    task = build_task(option("task", name, root=str(tmp_path), download=download))
    with pytest.raises(ConfigError) as err:
        task.prepare()
    message = str(err.value)
    if name == "cifar10":
        folder, files = "cifar-10-batches-py", ["data_batch_1", "test_batch", "batches.meta"]
    else:
        folder, files = f"{VISION[name].__name__}/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    assert "\n" not in message and message.startswith("task.root=") and "task.download" in message
    assert str(tmp_path / folder) in message and all(f in message for f in files)
    assert ("no network" in message) == download


BAD_KNOBS = [
    ("adding", "length", 1),
    ("adding", "eval_size", 0),
    ("copy", "length", 0),
    ("temporal_order", "length", 9),
    ("temporal_order", "length", 12.5),
    ("digits", "test_fraction", 1.0),
    ("text", "seq_len", 0),
    ("text", "max_bytes", -5),
    ("text", "eval_fraction", 0),
    ("text", "path", 3),
    ("regression", "n_samples", True),
    ("regression", "data_seed", -1),
    ("mnist", "download", "yes"),
    ("cifar10", "root", ""),
]


@pytest.mark.parametrize("name,key,value", BAD_KNOBS)
def test_bad_knob_fails_in_one_line_naming_the_key(name, key, value):
    with pytest.raises(ConfigError) as err:
        build_task(option("task", name, **{key: value}))
    assert str(err.value).startswith(f"task.{key}=") and "\n" not in str(err.value)


@pytest.mark.parametrize("name", TASKS)
def test_config_builds_and_documents_every_key(name):
    path = CONF / f"{name}.yaml"
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and "gradlab/tasks/" in lines[0]
    assert all(
        "  # " in line for line in lines[1:] if line.strip() and not line.startswith(("name:", "_target_:"))
    )
    cfg = yaml.safe_load(path.read_text())
    assert cfg["name"] == name and cfg["steps"] >= 1 and cfg["batch_size"] >= 1
    assert build_task(cfg).spec.shape  # knobs match the constructor; spec needs no data
