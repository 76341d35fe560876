"""Tests for rrcm.data: every format, the fixed digits split, the caches, the augmentations, the errors."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rrcm.data import DATASETS, DataInfo, ImageDataset, load_dataset
from rrcm.data import cifar10, digits, mnist
from rrcm.data.augment import crop_and_flip, identity, random_crop, random_hflip, train_augment
from rrcm.data.imagefolder import ImageFolderDataset, resize_center_crop
from rrcm.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(*parts: str) -> Path:
    """A path in the shared data folder, or skip the test if that folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own empty data cache (never the user's ~/.cache)."""
    cache = tmp_path / "rrcm-cache"
    monkeypatch.setenv("RRCM_CACHE", str(cache))
    return cache / "data"


def check_float_images(dataset: ImageDataset, shape: tuple[int, ...]) -> None:
    image, label = dataset[0]
    assert image.dtype == torch.float32 and tuple(image.shape) == shape
    assert isinstance(label, int)
    images, labels = dataset.batch(range(min(len(dataset), 5)))
    assert images.dtype == torch.float32 and tuple(images.shape[1:]) == shape
    assert labels.dtype == torch.int64
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert dataset.labels.dtype == torch.int64 and dataset.labels.shape == (len(dataset),)
    assert (dataset.info.channels, dataset.info.image_size, dataset.info.image_size) == shape
    torch.testing.assert_close(images[0], image, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# load_dataset and DataInfo


def test_datasets_tuple():
    assert DATASETS == ("digits", "mnist", "cifar10", "imagefolder")


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(UserError, match="unknown dataset 'cifar100': choose one of digits, mnist, cifar10, imagefolder"):
        load_dataset("cifar100", "test")


@pytest.mark.parametrize("name", DATASETS)
def test_unknown_split(name):
    with pytest.raises(UserError, match="unknown split 'val': use 'train' or 'test'"):
        load_dataset(name, "val", "/nonexistent")


@pytest.mark.parametrize("name", ["mnist", "cifar10", "imagefolder"])
def test_missing_root(name, tmp_path):
    with pytest.raises(UserError, match="needs a data folder"):
        load_dataset(name, "test")
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(name, "test", tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        load_dataset(name, "test", tmp_path / "file")


@pytest.mark.parametrize("name, native", [("digits", 8), ("mnist", 28), ("cifar10", 32)])
def test_fixed_size_sets_refuse_another_image_size(name, native, tmp_path):
    with pytest.raises(UserError, match=f"{native}x{native}; image_size=64 is not supported"):
        load_dataset(name, "test", tmp_path, image_size=64)


def test_data_info_is_frozen_and_json_able():
    info = load_dataset("digits", "test").info
    as_dict = info.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["classes"] == [str(d) for d in range(10)] and as_dict["image_size"] == 8
    with pytest.raises(AttributeError):
        info.num_classes = 3  # type: ignore[misc]
    assert DataInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in as_dict.items()}) == info


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_sizes_dtype_range():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1297, 500)
    for dataset in (train, test):
        check_float_images(dataset, (1, 8, 8))
        assert dataset.info.num_classes == 10 and dataset.info.name == "digits"
        assert dataset.images.dtype == torch.uint8
    all_images, _ = train.batch(range(len(train)))
    assert float(all_images.max()) == 1.0  # 16 / 16


def test_digits_split_is_pinned():
    """The fixed split must never change: sizes, per-class counts and the first indices are pinned."""
    images, labels = digits._load_all()
    train_idx, test_idx = digits.split_indices(labels)
    assert len(labels) == 1797
    assert test_idx[:10].tolist() == [1, 5, 6, 9, 12, 14, 15, 16, 17, 19]
    assert train_idx[:5].tolist() == [0, 2, 3, 4, 7]
    assert np.bincount(labels[test_idx]).tolist() == [50] * 10
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(1797))
    test = load_dataset("digits", "test")
    assert torch.equal(test.images, torch.from_numpy(images[test_idx]))
    assert test.labels[:10].tolist() == labels[test_idx[:10]].tolist() == [1, 5, 6, 9, 2, 4, 5, 6, 7, 9]
    assert set(test.labels.tolist()) == set(range(10))


def test_digits_mean_std_are_the_train_split_statistics():
    mean, std = digits._train_mean_std()
    info = load_dataset("digits", "train").info
    assert info.mean == pytest.approx((mean,), abs=1e-4) and info.std == pytest.approx((std,), abs=1e-4)


def test_digits_works_with_a_dataloader():
    loader = torch.utils.data.DataLoader(load_dataset("digits", "test"), batch_size=7)
    images, labels = next(iter(loader))
    assert images.shape == (7, 1, 8, 8) and labels.dtype == torch.int64


# ---------------------------------------------------------------------------------------------
# MNIST


def test_mnist_test_split():
    dataset = load_dataset("mnist", "test", shared("mnist"))
    assert len(dataset) == 10_000
    check_float_images(dataset, (1, 28, 28))
    assert dataset.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(dataset.labels.numpy()).sum() == 10_000
    assert dataset.info.mean == (0.1307,) and dataset.info.std == (0.3081,)


def test_mnist_truncated_train_images_are_kept_and_aligned():
    root = shared("mnist")
    with pytest.warns(UserWarning, match="MNIST train images file is truncated: using 17,435 of 60,000 images"):
        dataset = load_dataset("mnist", "train", root)
    assert len(dataset) == 17_435
    assert dataset.labels[:5].tolist() == [5, 0, 4, 1, 9]
    all_labels, declared = mnist.read_idx(root / "train-labels-idx1-ubyte.gz", ndim=1)
    assert declared == 60_000 and len(all_labels) == 60_000
    assert torch.equal(dataset.labels, torch.from_numpy(all_labels[:17_435].astype(np.int64)))
    last_image, _ = dataset[len(dataset) - 1]
    assert float(last_image.max()) > 0  # a real image, not padding


def write_idx(path: Path, array: np.ndarray, *, compress: bool, drop_bytes: int = 0) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    content = (header + array.astype(np.uint8).tobytes())[: len(header) + array.size - drop_bytes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if compress else content)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("subdir", [".", "MNIST/raw"])
def test_mnist_synthetic_idx_round_trip(tmp_path, compress, subdir):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / subdir / f"t10k-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(tmp_path / subdir / f"t10k-labels-idx1-ubyte{suffix}", labels, compress=compress)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete file gives no warning
        dataset = load_dataset("mnist", "test", tmp_path)
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(images))
    assert dataset.labels.tolist() == labels.tolist()
    image, _ = dataset[3]
    torch.testing.assert_close(image[0], torch.from_numpy(images[3]).float() / 255)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_synthetic_truncated_file_keeps_complete_images(tmp_path, compress):
    images = np.arange(7 * 28 * 28, dtype=np.int64).reshape(7, 28, 28) % 251
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress=compress, drop_bytes=28 * 28 + 100)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(7) % 10, compress=compress)
    with pytest.warns(UserWarning, match="using 5 of 7 images"):
        dataset = load_dataset("mnist", "test", tmp_path)
    assert len(dataset) == 5 and dataset.labels.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(images[:5].astype(np.uint8)))


def test_mnist_a_gzip_cut_mid_stream_keeps_complete_images(tmp_path):
    """As the shared file: the gzip stream itself ends early (no gzip trailer)."""
    images = np.random.default_rng(2).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(50) % 10, compress=True)
    with pytest.warns(UserWarning, match="truncated: using"):
        dataset = load_dataset("mnist", "test", tmp_path)
    assert 0 < len(dataset) < 50
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(images[: len(dataset)]))


def test_mnist_missing_file_lists_what_is_expected(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28)), compress=True)
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\(\.gz\) not found.*train-images-idx3-ubyte"):
        load_dataset("mnist", "test", tmp_path)


def test_mnist_bad_magic_number(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)), compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((2, 28, 28)), compress=False)  # idx3, not idx1
    with pytest.raises(UserError, match="is not an idx1-ubyte file .*expected 00000801"):
        load_dataset("mnist", "test", tmp_path)


def test_mnist_corrupt_gzip(tmp_path):
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(2), compress=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"not a deflate stream" * 10)
    with pytest.raises(UserError, match="is not a valid gzip file .*re-download it"):
        load_dataset("mnist", "test", tmp_path)


def test_mnist_files_that_do_not_belong_together(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)), compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4), compress=True)
    with pytest.raises(UserError, match="declares 3 images but .* 4 labels: the files do not belong together"):
        load_dataset("mnist", "test", tmp_path)


def test_mnist_wrong_image_size(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 32, 32)), compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3), compress=True)
    with pytest.raises(UserError, match="holds 32x32 images, MNIST's are 28x28"):
        load_dataset("mnist", "test", tmp_path)


# ---------------------------------------------------------------------------------------------
# CIFAR-10, pickle batches


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """A batch like the originals: a protocol-2 pickle of a dict with bytes keys."""
    batch = {b"batch_label": b"synthetic", b"labels": labels, b"data": images.reshape(len(images), -1),
             b"filenames": [b"x.png"] * len(images)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture
def synthetic_batches(tmp_path):
    """cifar-10-batches-py/ with 3 images per train batch and 4 test images; returns (root, arrays)."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    arrays = {}
    for name in (*cifar10.BATCH_FILES["train"], "test_batch"):
        count = 4 if name == "test_batch" else 3
        images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count).tolist()
        write_cifar_batch(folder / name, images, labels)
        arrays[name] = (images, labels)
    return tmp_path / "cifar", arrays


def test_cifar10_pickle_round_trip(synthetic_batches):
    root, arrays = synthetic_batches
    test = load_dataset("cifar10", "test", root)
    assert torch.equal(test.images, torch.from_numpy(arrays["test_batch"][0]))
    assert test.labels.tolist() == arrays["test_batch"][1]
    check_float_images(test, (3, 32, 32))
    train = load_dataset("cifar10", "train", root / "cifar-10-batches-py")  # the batches folder itself works too
    expected = np.concatenate([arrays[name][0] for name in cifar10.BATCH_FILES["train"]])
    assert len(train) == 15 and torch.equal(train.images, torch.from_numpy(expected))
    assert train.labels.tolist() == sum((arrays[name][1] for name in cifar10.BATCH_FILES["train"]), [])
    assert train.info.classes == cifar10.CLASSES
    assert train.info.mean == (0.4914, 0.4822, 0.4465) and train.info.std == (0.2470, 0.2435, 0.2616)


def test_cifar10_batches_meta_class_names(synthetic_batches):
    meta = shared("cifar10", "batches.meta")
    assert cifar10.read_class_names(meta) == cifar10.CLASSES
    root, _ = synthetic_batches
    shutil.copy(meta, root / "cifar-10-batches-py" / "batches.meta")
    assert load_dataset("cifar10", "test", root).info.classes == cifar10.CLASSES


def test_cifar10_batches_meta_with_other_names_is_refused(synthetic_batches):
    root, _ = synthetic_batches
    names = [name.encode() for name in reversed(cifar10.CLASSES)]
    (root / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    with pytest.raises(UserError, match="class names in .*batches.meta are .*not CIFAR-10's"):
        load_dataset("cifar10", "test", root)


class _RunsShellCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    payload = {b"data": _RunsShellCommand(marker), b"labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match=r"refusing to unpickle (posix|os|nt)\.system .*not a genuine CIFAR-10 file"):
        load_dataset("cifar10", "test", tmp_path)
    assert not marker.exists()


def test_cifar10_restricted_unpickler_refuses_other_codecs(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    # A hand-written pickle calling _codecs.encode with a codec other than latin1.
    evil = b"\x80\x02}q\x00X\x04\x00\x00\x00dataq\x01c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86Rs."
    (folder / "test_batch").write_bytes(evil)
    with pytest.raises(UserError, match="refusing to unpickle _codecs.encode with codec 'rot13'"):
        load_dataset("cifar10", "test", tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_truncated_shared_batches_give_a_clear_error(split):
    folder = shared("cifar10", "cifar-10-batches-py.truncated-3MiB")
    with pytest.raises(UserError, match=r"is truncated or corrupt \(pickle data was truncated\): re-download cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", split, folder)


def test_cifar10_python2_batch_format(tmp_path):
    """A real Python 2 batch: the shared 3 MiB prefix of test_batch, completed with zero pixels.

    Its first 1,017 images are real; they must match the JPEG copy (its README: mean absolute error
    5.8/255 overall, at most 13/255 per image; a wrongly paired image is off by about 90/255).
    """
    prefix = shared("cifar10", "cifar-10-batches-py.truncated-3MiB", "test_batch").read_bytes()
    data_opcode = b"T" + (10_000 * 3072).to_bytes(4, "little")
    start = prefix.index(data_opcode) + len(data_opcode)
    real_pixels = len(prefix) - start
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    # Close the data string, the array's state tuple (t), BUILD (b), the dict's SETITEMS (u), STOP.
    (folder / "test_batch").write_bytes(prefix + bytes(10_000 * 3072 - real_pixels) + b"tbu.")
    dataset = load_dataset("cifar10", "test", tmp_path)
    assert len(dataset) == 10_000 and np.bincount(dataset.labels.numpy()).tolist() == [1000] * 10
    assert dataset.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    real_images = real_pixels // 3072
    assert real_images == 1017
    assert dataset.images[:real_images].reshape(-1).numpy().tobytes() == prefix[start : start + real_images * 3072]

    jpeg_archive = SHARED_DATA / "cifar10-jpeg" / "test.tar.gz"
    if jpeg_archive.exists():
        jpeg = load_dataset("cifar10", "test", jpeg_archive.parent)
        labels = dataset.labels.numpy()
        for index in range(20):
            label = int(labels[index])
            rank_in_class = int((labels[:index] == label).sum())  # NNNN.jpg in the class folder
            jpeg_image = jpeg.images[label * 1000 + rank_in_class].int()
            assert float((jpeg_image - dataset.images[index].int()).abs().float().mean()) < 13


def test_cifar10_missing_batch_files(synthetic_batches):
    root, _ = synthetic_batches
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    (root / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(UserError, match="data_batch_3, data_batch_5 missing in .*expected data_batch_1, data_batch_2"):
        load_dataset("cifar10", "train", root)


def test_cifar10_batch_with_wrong_content(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batch(folder / "test_batch", np.zeros((2, 3, 16, 16), dtype=np.uint8), [0, 1])
    with pytest.raises(UserError, match=r"'data' is ndarray \(2, 768\), not uint8 \(N, 3072\)"):
        load_dataset("cifar10", "test", tmp_path)
    write_cifar_batch(folder / "test_batch", np.zeros((2, 3, 32, 32), dtype=np.uint8), [0, 10])
    with pytest.raises(UserError, match="labels outside 0..9"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar10_unknown_folder_format(tmp_path):
    (tmp_path / "something.txt").write_text("x")
    with pytest.raises(UserError, match=r"no CIFAR-10 test data in .*expected cifar-10-batches-py/ .*test\.tar\.gz"):
        load_dataset("cifar10", "test", tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(UserError, match="extract it"):
        load_dataset("cifar10", "test", tmp_path)


# ---------------------------------------------------------------------------------------------
# CIFAR-10, ImageFolder copies (folder and archive)


def test_cifar10_jpeg_test_archive():
    """The whole shared JPEG test archive (about 2 s), then again from the cache."""
    root = shared("cifar10-jpeg")
    start = time.perf_counter()
    dataset = load_dataset("cifar10", "test", root)
    first_load = time.perf_counter() - start
    assert len(dataset) == 10_000
    check_float_images(dataset, (3, 32, 32))
    # Label order follows the class folders, canonical CIFAR-10 order; images by file name within a class.
    assert torch.equal(dataset.labels, torch.arange(10).repeat_interleave(1000))
    assert dataset.info.classes == cifar10.CLASSES
    with tarfile.open(root / "test.tar.gz") as archive:
        ship_42 = np.array(Image.open(archive.extractfile("test/ship/0042.jpg")).convert("RGB"))
    assert torch.equal(dataset.images[8 * 1000 + 42], torch.from_numpy(ship_42).permute(2, 0, 1))

    start = time.perf_counter()
    again = load_dataset("cifar10", "test", root)
    assert time.perf_counter() - start < max(0.5, first_load / 3)  # from the cache
    assert torch.equal(again.images, dataset.images) and torch.equal(again.labels, dataset.labels)


def test_cifar10_jpeg_train_archive_first_members():
    archive = shared("cifar10-jpeg", "train.tar.gz")
    dataset = cifar10.load_archive_split(archive, "train", limit=200)
    assert len(dataset) == 200 and dataset.images.shape == (200, 3, 32, 32)
    assert dataset.labels.tolist() == [0] * 200  # train/airplane/0000.jpg ... 0199.jpg come first


def make_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_bytes(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_tar_gz(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))


@pytest.fixture
def cifar_png_files():
    """{member name: PNG bytes} for 2 images per CIFAR-10 class, listed in a scrambled order."""
    files = {}
    for label, class_name in reversed(list(enumerate(cifar10.CLASSES))):
        for number in (1, 0):
            files[f"test/{class_name}/{number:04d}.png"] = image_bytes(make_image(10 * label + number), "PNG")
    return files


def expected_cifar_pixels(files: dict[str, bytes]) -> np.ndarray:
    ordered = sorted(files)  # class then file name: the order the loader promises
    return np.stack([np.asarray(Image.open(io.BytesIO(files[name]))).transpose(2, 0, 1) for name in ordered])


def test_cifar10_small_archive_round_trip(tmp_path, cifar_png_files, private_cache):
    write_tar_gz(tmp_path / "test.tar.gz", cifar_png_files)
    dataset = load_dataset("cifar10", "test", tmp_path)
    assert dataset.labels.tolist() == [label for label in range(10) for _ in range(2)]
    assert np.array_equal(dataset.images.numpy(), expected_cifar_pixels(cifar_png_files))
    assert len(list(private_cache.glob("cifar10-test-*.npz"))) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rrcm-cache", "test.tar.gz"]  # nothing beside the source


def test_cifar10_extracted_folder_round_trip(tmp_path, cifar_png_files):
    for name, data in cifar_png_files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    dataset = load_dataset("cifar10", "test", tmp_path)
    assert np.array_equal(dataset.images.numpy(), expected_cifar_pixels(cifar_png_files))
    assert dataset.labels.tolist() == [label for label in range(10) for _ in range(2)]
    again = load_dataset("cifar10", "test", tmp_path)  # from the cache
    assert torch.equal(again.images, dataset.images)


def test_cifar10_class_folders_must_match(tmp_path, cifar_png_files):
    renamed = {name.replace("/automobile/", "/car/"): data for name, data in cifar_png_files.items()}
    write_tar_gz(tmp_path / "test.tar.gz", renamed)
    with pytest.raises(UserError, match=r"class names in .*test\.tar\.gz are .*'car'.*not CIFAR-10's"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar10_images_of_another_size(tmp_path):
    files = {f"test/{name}/0000.png": image_bytes(make_image(0, (16, 16)), "PNG") for name in cifar10.CLASSES}
    write_tar_gz(tmp_path / "test.tar.gz", files)
    with pytest.raises(UserError, match="are 16x16, CIFAR-10's are 32x32"):
        load_dataset("cifar10", "test", tmp_path)


def test_corrupt_archive(tmp_path, cifar_png_files):
    write_tar_gz(tmp_path / "test.tar.gz", cifar_png_files)
    data = (tmp_path / "test.tar.gz").read_bytes()
    (tmp_path / "test.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"archive .*test\.tar\.gz is truncated or corrupt"):
        load_dataset("cifar10", "test", tmp_path)


def test_damaged_cache_entry_is_decoded_again(tmp_path, cifar_png_files, private_cache):
    write_tar_gz(tmp_path / "test.tar.gz", cifar_png_files)
    first = load_dataset("cifar10", "test", tmp_path)
    (entry,) = private_cache.glob("*.npz")
    entry.write_bytes(b"garbage")
    assert torch.equal(load_dataset("cifar10", "test", tmp_path).images, first.images)


def test_unwritable_cache_only_warns(tmp_path, cifar_png_files, monkeypatch):
    write_tar_gz(tmp_path / "test.tar.gz", cifar_png_files)
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("RRCM_CACHE", str(tmp_path / "not-a-folder"))
    with pytest.warns(UserWarning, match="could not write the data cache"):
        dataset = load_dataset("cifar10", "test", tmp_path)
    assert len(dataset) == 20


# ---------------------------------------------------------------------------------------------
# ImageFolder


def write_tree(root: Path, classes: dict[str, int], size: tuple[int, int] = (40, 30)) -> None:
    for class_index, (class_name, count) in enumerate(classes.items()):
        folder = root / class_name
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            make_image(100 * class_index + number, size).save(folder / f"img{number:02d}.png")


def test_imagefolder_lazy_tree(tmp_path):
    write_tree(tmp_path / "train", {"dog": 2, "ant": 3, "cat": 1})
    write_tree(tmp_path / "val", {"dog": 1, "ant": 1, "cat": 2})
    (tmp_path / "val" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "val" / "cat" / ".hidden.png").write_bytes(b"")
    test = load_dataset("imagefolder", "test", tmp_path, image_size=16)  # "test" reads val/
    assert isinstance(test, ImageFolderDataset)
    assert test.info.classes == ("ant", "cat", "dog") and test.info.num_classes == 3
    assert test.labels.tolist() == [0, 1, 1, 2]
    assert [Path(p).name for p in test.paths] == ["img00.png", "img00.png", "img01.png", "img00.png"]
    check_float_images(test, (3, 16, 16))
    assert test.info.mean == (0.485, 0.456, 0.406) and test.info.std == (0.229, 0.224, 0.225)
    train = load_dataset("imagefolder", "train", tmp_path)
    assert len(train) == 6 and train.info.image_size == 224 and train[0][0].shape == (3, 224, 224)


def test_imagefolder_decodes_only_on_access(tmp_path):
    write_tree(tmp_path / "test", {"a": 1, "b": 1})
    (tmp_path / "test" / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    dataset = load_dataset("imagefolder", "test", tmp_path, image_size=8)  # nothing decoded yet
    assert len(dataset) == 3
    dataset[0]
    with pytest.raises(UserError, match=r"cannot decode image .*broken\.jpg .*remove or replace the file"):
        dataset[1]


def test_resize_center_crop_is_the_imagenet_eval_transform():
    # 64x32, left quarter red, rest blue: resize to 36x18 (shorter side round(16 / 0.875) = 18),
    # crop 16x16 from left 10: the red quarter (resized columns 0..8) is cut away.
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :16, 0] = 255
    pixels[:, 16:, 2] = 255
    out = resize_center_crop(Image.fromarray(pixels), 16)
    assert out.size == (16, 16)
    result = np.asarray(out)
    assert (result[..., 2] == 255).all() and (result[..., 0] == 0).all()
    assert resize_center_crop(Image.fromarray(pixels[:, :32]), 28).size == (28, 28)
    assert resize_center_crop(make_image(0, (500, 375)), 224).size == (224, 224)


def test_imagefolder_without_split_folders_uses_root(tmp_path):
    write_tree(tmp_path, {"b": 1, "a": 2})
    for split in ("train", "test"):
        dataset = load_dataset("imagefolder", split, tmp_path, image_size=12)
        assert dataset.info.classes == ("a", "b") and dataset.labels.tolist() == [0, 0, 1]


def test_imagefolder_missing_split(tmp_path):
    write_tree(tmp_path / "train", {"a": 1})
    with pytest.raises(UserError, match=r"no test split in .*\(found train\): expected .*/test/<class>/ or .*/val/<class>/"):
        load_dataset("imagefolder", "test", tmp_path)


def test_imagefolder_empty(tmp_path):
    with pytest.raises(UserError, match="no ImageFolder data in"):
        load_dataset("imagefolder", "test", tmp_path)
    (tmp_path / "test").mkdir()
    with pytest.raises(UserError, match="no class folders in .*needs .*<class>/<image files>"):
        load_dataset("imagefolder", "test", tmp_path)
    (tmp_path / "test" / "a").mkdir()
    (tmp_path / "test" / "b").mkdir()
    make_image(0).save(tmp_path / "test" / "a" / "x.png")
    with pytest.raises(UserError, match=r"1 class folder\(s\) in .* hold no image \(b\)"):
        load_dataset("imagefolder", "test", tmp_path)


def test_imagefolder_split_classes_must_agree(tmp_path):
    write_tree(tmp_path / "train", {"a": 1, "b": 1, "c": 1})
    write_tree(tmp_path / "test", {"a": 1, "c": 1})
    with pytest.raises(UserError, match=r"class folders of .* differ .*\['b'\].*give both splits the same class folders"):
        load_dataset("imagefolder", "test", tmp_path)


def test_imagefolder_archive_matches_the_folder(tmp_path, private_cache):
    write_tree(tmp_path / "tree" / "test", {"zebra": 2, "ant": 1}, size=(30, 50))
    folder_set = load_dataset("imagefolder", "test", tmp_path / "tree", image_size=16)
    files = {
        str(path.relative_to(tmp_path / "tree")): path.read_bytes()
        for path in sorted((tmp_path / "tree").rglob("*.png"), reverse=True)
    }
    (tmp_path / "archived").mkdir()
    write_tar_gz(tmp_path / "archived" / "test.tar.gz", files)
    archive_set = load_dataset("imagefolder", "test", tmp_path / "archived", image_size=16)
    assert archive_set.info == folder_set.info
    assert torch.equal(archive_set.labels, folder_set.labels)
    assert torch.equal(archive_set.batch(range(3))[0], folder_set.batch(range(3))[0])
    # Another image size is another cache entry.
    assert load_dataset("imagefolder", "test", tmp_path / "archived", image_size=8)[0][0].shape == (3, 8, 8)
    assert len(list(private_cache.glob("imagefolder-test-*.npz"))) == 2


@pytest.mark.parametrize("prefix", ["", "val/", "imagenette2/val/"])
def test_imagefolder_archive_leading_folders_are_dropped(tmp_path, prefix):
    files = {f"{prefix}{name}/{number}.png": image_bytes(make_image(number), "PNG") for name in ("b", "a") for number in (2, 1)}
    files["README.txt"] = b"not an image"  # not an image: skipped
    files[f"{prefix}a/.hidden.png"] = b"hidden: skipped"
    write_tar_gz(tmp_path / "val.tar.gz", files)
    dataset = load_dataset("imagefolder", "test", tmp_path, image_size=8)
    assert dataset.info.classes == ("a", "b") and dataset.labels.tolist() == [0, 0, 1, 1]


def test_imagefolder_invalid_image_size(tmp_path):
    write_tree(tmp_path / "test", {"a": 1})
    with pytest.raises(UserError, match="image_size must be a positive integer"):
        load_dataset("imagefolder", "test", tmp_path, image_size=0)


# ---------------------------------------------------------------------------------------------
# augmentations


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_crop_and_flip_shapes_and_determinism():
    x = torch.rand(16, 3, 32, 32, generator=seeded(0))
    for augment in (lambda x, g: random_crop(x, 4, g), random_hflip, crop_and_flip):
        out = augment(x, seeded(1))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.equal(out, augment(x, seeded(1)))
        assert not torch.equal(out, augment(x, seeded(2)))


def test_random_crop_takes_windows_of_the_zero_padded_image():
    x = torch.rand(8, 2, 6, 5, generator=seeded(0))
    out = random_crop(x, 3, seeded(4))
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    for image, cropped in zip(padded, out):
        windows = [image[:, top : top + 6, left : left + 5] for top in range(7) for left in range(7)]
        assert any(torch.equal(window, cropped) for window in windows)


def test_random_crop_with_padding_zero_is_identity():
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(random_crop(x, 0, seeded(0)), x)


def test_random_hflip_probability_extremes():
    x = torch.rand(5, 3, 4, 4)
    assert torch.equal(random_hflip(x, seeded(0), p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, seeded(0), p=0.0), x)
    flipped = random_hflip(x, seeded(0))
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x))


def test_train_augment_by_dataset():
    assert train_augment("digits") is identity and train_augment("mnist") is identity
    assert train_augment("cifar10") is crop_and_flip and train_augment("imagefolder") is crop_and_flip
    x = torch.rand(2, 1, 8, 8)
    assert train_augment("mnist")(x, seeded(0)) is x
    with pytest.raises(UserError, match="no training augmentation for dataset 'svhn': choose one of digits"):
        train_augment("svhn")


def test_every_registered_data_set_has_its_reader_functions_and_augmentation():
    import importlib

    from rrcm.data import READERS
    from rrcm.data.augment import AUGMENTATIONS, train_augment

    for name, reader in READERS.items():
        module = importlib.import_module(f"rrcm.data.{reader.module}")
        assert callable(getattr(module, reader.load)) and callable(getattr(module, reader.probe)), name
        assert train_augment(name) is AUGMENTATIONS[reader.augment]
