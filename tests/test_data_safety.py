"""Hostile and malformed data: archive layouts, decompression bombs, memory bounds, and the probe.

The probe (`probe_dataset`, for `--dry-run`) must give the (info, count) of the real load and the
same errors for bad paths, without decoding any image.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rrcm
from rrcm.data import DATASETS, load_dataset, probe_dataset
from rrcm.data import cifar10, imagefolder, mnist
from rrcm.errors import UserError

SRC = str(Path(rrcm.__file__).resolve().parents[1])  # the rrcm this test imported, for subprocesses


from tests.test_data import private_cache, shared  # noqa: E402,F401  (autouse: every test its own cache)


def png(width: int = 32, height: int = 32, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros, written without ever holding its pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    rows = bytes(1 + width) * 100  # each row: filter byte 0, then the pixels
    idat = [compressor.compress(rows) for _ in range(height // 100)]
    idat += [compressor.compress(bytes(1 + width) * (height % 100)), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def write_tar_gz(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
        for name, target in (links or {}).items():
            member = tarfile.TarInfo(name)
            member.type, member.linkname = tarfile.SYMTYPE, target
            archive.addfile(member)
    return path


def good_files(dataset: str) -> dict[str, bytes]:
    """A valid test.tar.gz content for `dataset`: test/<class>/<image>, 32x32 PNGs."""
    classes = cifar10.CLASSES if dataset == "cifar10" else ("ant", "bee")
    return {f"test/{name}/{number}.png": png(seed=10 * label + number) for label, name in enumerate(classes) for number in (0, 1)}


# ---------------------------------------------------------------------------------------------
# archive layout (issue B.2)

BAD_MEMBERS = {
    "absolute": "/x.png",
    "parent": "test/../x.png",
    "top level": "x.png",
    "another folder": "other/x.png",
    "a folder deeper": "test/ant/extra/x.png",
    "a folder less deep": "test/x.png",
}


@pytest.mark.parametrize("dataset", ["imagefolder", "cifar10"])
@pytest.mark.parametrize("kind", BAD_MEMBERS)
def test_an_image_outside_the_split_class_layout_is_an_error_naming_it(tmp_path, dataset, kind, private_cache):
    name = BAD_MEMBERS[kind].replace("ant", "airplane" if dataset == "cifar10" else "ant")
    write_tar_gz(tmp_path / "test.tar.gz", {**good_files(dataset), name: png(seed=99)})
    for read in (load_dataset, probe_dataset):
        with pytest.raises(UserError, match=rf"{name}.*expected every image at test/<class>/<image>") as error:
            read(dataset, "test", tmp_path, image_size=32)
        assert "\n" not in str(error.value)
    assert not private_cache.exists() or not list(private_cache.iterdir())  # nothing cached


def test_the_layout_is_set_by_the_first_image_and_the_error_names_both(tmp_path):
    write_tar_gz(tmp_path / "test.tar.gz", {"misplaced/x.png": png(), **good_files("imagefolder")})
    with pytest.raises(UserError, match=r"image test/ant/0\.png .*not in a class folder beside the others.*first image misplaced/x\.png"):
        load_dataset("imagefolder", "test", tmp_path, image_size=32)


def test_a_link_named_like_an_image_is_an_error(tmp_path):
    write_tar_gz(tmp_path / "test.tar.gz", good_files("imagefolder"), links={"test/ant/link.png": "0.png"})
    for read in (load_dataset, probe_dataset):
        with pytest.raises(UserError, match=r"test/ant/link\.png in archive .* is a link or special file"):
            read("imagefolder", "test", tmp_path, image_size=32)


def test_valid_layouts_still_load_with_their_folder_names_as_classes(tmp_path):
    for number, prefix in enumerate(("", "./", "test/", "imagenette2/val/")):
        root = tmp_path / f"layout{number}"
        root.mkdir()
        files = {f"{prefix}{name}/{n}.png": png(seed=n) for name in ("bee", "ant") for n in (1, 0)}
        files[f"{prefix}README.txt"] = b"skipped"
        files[f"{prefix}ant/._0.png"] = b"macOS resource fork, hidden: skipped"
        write_tar_gz(root / "test.tar.gz", files)
        dataset = load_dataset("imagefolder", "test", root, image_size=16)
        assert dataset.info.classes == ("ant", "bee") and dataset.labels.tolist() == [0, 0, 1, 1]


def test_every_dataset_records_its_real_class_names(tmp_path):
    digits = tuple(str(d) for d in range(10))
    assert load_dataset("digits", "test").info.classes == digits
    assert probe_dataset("digits", "test")[0].classes == digits
    mnist_root = tmp_path / "mnist"
    mnist_root.mkdir()
    for stem, ndim, dims in (("t10k-images-idx3-ubyte", 3, (2, 28, 28)), ("t10k-labels-idx1-ubyte", 1, (2,))):
        header = bytes([0, 0, 8, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
        (mnist_root / stem).write_bytes(header + bytes(int(np.prod(dims))))
    assert load_dataset("mnist", "test", mnist_root).info.classes == digits
    write_tar_gz(tmp_path / "test.tar.gz", good_files("cifar10"))
    assert load_dataset("cifar10", "test", tmp_path).info.classes == cifar10.CLASSES
    folder = tmp_path / "ants_and_bees"
    for name in ("bee", "ant"):
        (folder / "test" / name).mkdir(parents=True)
        (folder / "test" / name / "0.png").write_bytes(png())
    assert load_dataset("imagefolder", "test", folder).info.classes == ("ant", "bee")


# ---------------------------------------------------------------------------------------------
# decompression bombs and decode failures (issue B.3)


@pytest.mark.parametrize("dataset", ["imagefolder", "cifar10"])
@pytest.mark.parametrize(
    "side, what",
    [
        (14_000, "too large to decode safely"),  # over twice Pillow's limit: DecompressionBombError
        (10_000, "too large to decode safely"),  # over Pillow's limit only: DecompressionBombWarning
        (9_000, "more than the 67,108,864 rrcm decodes"),  # under Pillow's limit, over rrcm's
    ],
)
def test_a_png_bomb_in_an_archive_is_one_line_naming_the_member_and_archive(tmp_path, dataset, side, what, monkeypatch):
    files = good_files(dataset)
    bomb = next(iter(files))
    files[bomb] = png_of_zeros(side, side)
    write_tar_gz(tmp_path / "test.tar.gz", files)

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)  # the size is refused from the header
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a warning either
        with pytest.raises(UserError, match=rf"image {bomb} in .*test\.tar\.gz .*{what}.*(downscale|remove)") as error:
            load_dataset(dataset, "test", tmp_path, image_size=32)
    assert "\n" not in str(error.value)


def test_a_bomb_in_an_image_folder_is_a_user_error_when_read(tmp_path):
    (tmp_path / "test" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a" / "bomb.png").write_bytes(png_of_zeros(14_000, 14_000))
    dataset = load_dataset("imagefolder", "test", tmp_path, image_size=8)
    with pytest.raises(UserError, match=r"image .*bomb\.png is too large to decode safely"):
        dataset[0]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "bad crc"])
def test_a_damaged_image_in_an_archive_names_the_member_and_the_archive(tmp_path, damage):
    files = good_files("imagefolder")
    data = files["test/bee/1.png"]
    files["test/bee/1.png"] = {
        "truncated": data[: len(data) // 2],
        "garbage": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
        "bad crc": data[:40] + bytes([data[40] ^ 0xFF]) + data[41:],
    }[damage]
    write_tar_gz(tmp_path / "test.tar.gz", files)
    with pytest.raises(UserError, match=r"cannot decode image test/bee/1\.png in .*test\.tar\.gz .*remove or replace the file"):
        load_dataset("imagefolder", "test", tmp_path, image_size=8)


def test_pixel_and_member_limits_are_module_constants(tmp_path, monkeypatch):
    write_tar_gz(tmp_path / "test.tar.gz", good_files("imagefolder"))
    monkeypatch.setattr(imagefolder, "MAX_IMAGE_PIXELS", 32 * 32 - 1)
    with pytest.raises(UserError, match=r"image test/ant/0\.png in .* is 32x32 = 1,024 pixels, more than the 1,023"):
        load_dataset("imagefolder", "test", tmp_path, image_size=8)
    monkeypatch.setattr(imagefolder, "MAX_MEMBER_BYTES", 100)
    for read in (load_dataset, probe_dataset):
        with pytest.raises(UserError, match=r"image test/ant/0\.png in archive .* is [\d,]+ bytes, more than the 100 rrcm reads"):
            read("imagefolder", "test", tmp_path, image_size=8)


# ---------------------------------------------------------------------------------------------
# memory (issue B.4): measured in a fresh process, peak resident size before and after

PEAK_SCRIPT = """
import json, resource, sys
from rrcm.data import load_dataset, probe_dataset
from rrcm.errors import UserError
read = {"load": load_dataset, "probe": probe_dataset}[sys.argv[3]]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read(sys.argv[1], "test", sys.argv[2], image_size=32)
    message = None
except UserError as error:
    message = str(error)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"message": message, "increase_mb": (after - before) / 1024}))
"""


def peak_increase(dataset: str, root: Path, read: str = "load") -> dict:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, dataset, str(root), read],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def pax_header_bomb(path: Path, size: int) -> None:
    """A tar.gz whose first record is a pax header claiming `size` bytes (zeros), then a valid image."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, size
    with gzip.open(path, "wb", compresslevel=1) as file:
        file.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            file.write(zeros)
        file.write(bytes(2 * tarfile.RECORDSIZE))


@pytest.mark.parametrize("read", ["load", "probe"])
@pytest.mark.parametrize("attack", ["81 Mpx PNG", "300 MiB pax header"])
def test_a_small_malicious_archive_is_refused_in_bounded_memory(tmp_path, attack, read):
    if attack == "81 Mpx PNG":
        files = good_files("cifar10")
        files["test/airplane/0.png"] = png_of_zeros(9_000, 9_000)  # under Pillow's bomb limit
        write_tar_gz(tmp_path / "test.tar.gz", files)
        if read == "probe":  # the probe reads no image, so it sees nothing wrong
            assert peak_increase("cifar10", tmp_path, read)["message"] is None
            return
        expected = r"image test/airplane/0\.png in .* is 9000x9000 = 81,000,000 pixels, more than"
    else:
        pax_header_bomb(tmp_path / "test.tar.gz", 300 << 20)
        expected = r"archive .*test\.tar\.gz holds tar metadata of more than 1,048,576 bytes before a member"
    assert (tmp_path / "test.tar.gz").stat().st_size < 2 << 20  # a small file
    result = peak_increase("cifar10", tmp_path, read)
    assert result["message"] is not None and re.search(expected, result["message"]), result
    assert result["increase_mb"] < 200, result


def test_archive_members_are_streamed_one_at_a_time(tmp_path, monkeypatch):
    """No member list of the whole archive: tarfile's own list is emptied as members go by."""
    write_tar_gz(tmp_path / "test.tar.gz", good_files("imagefolder"))
    seen = []
    real_next = tarfile.TarFile.next

    def next_member(self):
        seen.append(len(self.members))
        return real_next(self)

    monkeypatch.setattr(tarfile.TarFile, "next", next_member)
    monkeypatch.setattr(tarfile.TarFile, "getmembers", lambda self: pytest.fail("getmembers() called"))
    assert len(load_dataset("imagefolder", "test", tmp_path, image_size=8)) == 4
    assert len(seen) >= 5 and max(seen) <= 1  # 4 images and the end (tarfile.open reads the first one itself)


# ---------------------------------------------------------------------------------------------
# the probe (issue B.8): the real load's (info, count), no image decoded


class DecodeGuard:
    """While on, any image decode or pickle-batch read fails the test (its own patcher, so turning
    it off leaves the test's other patches, such as RRCM_CACHE, in place)."""

    def __init__(self):
        self.patcher = pytest.MonkeyPatch()

    @staticmethod
    def fail(*args, **kwargs):
        raise AssertionError("the probe decoded an image or read a batch's pixels")

    def on(self) -> None:
        self.patcher.setattr(Image, "open", self.fail)
        self.patcher.setattr(imagefolder, "decode_image", self.fail)
        self.patcher.setattr(cifar10, "read_batch", self.fail)

    def off(self) -> None:
        self.patcher.undo()


@pytest.fixture
def no_decoding():
    guard = DecodeGuard()
    guard.on()
    yield guard
    guard.off()


def probe_then_load(name: str, split: str, root: Path | None, no_decoding, **kwargs):
    """(probe result or UserError text, load result or UserError text), the probe without decoding."""

    def outcome(read):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = read(name, split, root, **kwargs)
            except UserError as error:
                return f"UserError: {error}", []
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        if isinstance(result, tuple):
            return result, messages
        return (result.info, len(result)), messages

    no_decoding.on()
    probed = outcome(probe_dataset)
    no_decoding.off()
    return probed, outcome(load_dataset)


SHARED_CASES = [
    ("digits", "train", None, 1297),
    ("digits", "test", None, 500),
    ("mnist", "test", "mnist", 10_000),
    ("mnist", "train", "mnist", 17_435),  # truncated images file: the complete ones, with a warning
    ("cifar10", "test", "cifar10-jpeg", 10_000),
    ("cifar10", "train", "cifar10/cifar-10-batches-py.truncated-3MiB", None),  # both: "truncated or corrupt"
    ("cifar10", "test", "cifar10/cifar-10-batches-py.truncated-3MiB", None),
]


@pytest.mark.parametrize("name, split, folder, count", SHARED_CASES)
def test_probe_matches_the_real_load_on_the_shared_data(name, split, folder, count, no_decoding):
    root = shared(*folder.split("/")) if folder else None
    probed, loaded = probe_then_load(name, split, root, no_decoding)
    assert probed == loaded
    if count is None:
        assert probed[0].startswith("UserError: CIFAR-10 file") and "truncated or corrupt" in probed[0]
    else:
        info, number = probed[0]
        assert number == count and info.classes == (cifar10.CLASSES if name == "cifar10" else tuple("0123456789"))
    assert bool(probed[1]) == (name == "mnist" and split == "train")  # the same truncation warning


def test_probe_of_the_shared_train_archive_counts_its_members(no_decoding):
    info, number = probe_dataset("cifar10", "train", shared("cifar10-jpeg"))
    assert number == 50_000 and info.classes == cifar10.CLASSES  # its README: 5,000 per class


def test_probe_matches_the_real_load_of_the_shared_train_archive(no_decoding):
    """Decodes all 50,000 JPEGs once (about 9 s on 2 cores)."""
    probed, loaded = probe_then_load("cifar10", "train", shared("cifar10-jpeg"), no_decoding)
    assert probed == loaded and probed[0][1] == 50_000


def test_probe_uses_a_cached_decode_without_reading_the_archive(tmp_path, monkeypatch):
    write_tar_gz(tmp_path / "test.tar.gz", good_files("cifar10"))
    dataset = load_dataset("cifar10", "test", tmp_path)
    monkeypatch.setattr(imagefolder, "iter_archive_images", lambda *a, **k: pytest.fail("archive read"))
    monkeypatch.setattr(cifar10, "count_archive_images", lambda *a, **k: pytest.fail("archive read"))
    assert probe_dataset("cifar10", "test", tmp_path) == (dataset.info, 20)


def write_batch(path: Path, count: int, protocol: int = 2, *, str_keys: bool = False, label_array: bool = False) -> None:
    images = np.random.default_rng(count).integers(0, 256, size=(count, 3072), dtype=np.uint8)
    labels = [i % 10 for i in range(count)]
    batch = {"labels": np.array(labels) if label_array else labels, "data": images, "batch_label": "synthetic"}
    if not str_keys:
        batch = {key.encode(): value for key, value in batch.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, 3, 4])
@pytest.mark.parametrize("count", [3, 400])  # 400 images: 1.2 MB of pixels, seeked over
def test_probe_of_pickle_batches_reads_no_pixels(tmp_path, protocol, count, no_decoding):
    folder = tmp_path / "cifar-10-batches-py"
    for index, name in enumerate((*cifar10.BATCH_FILES["train"], "test_batch")):
        write_batch(folder / name, count + index, protocol, str_keys=index % 2 == 1, label_array=index == 2)
    for split, expected in (("train", 5 * count + 10), ("test", count + 5)):
        assert probe_dataset("cifar10", split, tmp_path) == (cifar10.info(), expected)
    no_decoding.off()
    assert len(load_dataset("cifar10", "train", tmp_path)) == 5 * count + 10


def test_probe_of_a_full_size_python2_batch_seeks_over_its_pixels(tmp_path, no_decoding):
    prefix = shared("cifar10", "cifar-10-batches-py.truncated-3MiB", "test_batch").read_bytes()
    data_opcode = b"T" + (10_000 * 3072).to_bytes(4, "little")
    start = prefix.index(data_opcode) + len(data_opcode)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.parent.mkdir()
    batch.write_bytes(prefix + bytes(10_000 * 3072 - (len(prefix) - start)) + b"tbu.")
    assert cifar10.scan_batch(batch) == 10_000
    assert probe_dataset("cifar10", "test", tmp_path)[1] == 10_000
    batch.write_bytes(prefix + bytes(10) + b"tbu.")  # cut inside the pixels
    with pytest.raises(UserError, match=r"test_batch is truncated or corrupt \(pickle data was truncated\)"):
        probe_dataset("cifar10", "test", tmp_path)


def test_probe_of_pickle_batches_refuses_what_the_loader_refuses(tmp_path, no_decoding):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    cases = {
        "refusing to unpickle posix.system": b"\x80\x02}q\x00X\x04\x00\x00\x00dataq\x01cposix\nsystem\nX\x01\x00\x00\x00x\x85Rs.",
        "codec 'rot13'": b"\x80\x02}q\x00X\x04\x00\x00\x00dataq\x01c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86Rs.",
        "holds a list, not a CIFAR-10 batch dict": pickle.dumps([1, 2], protocol=2),
        "not CIFAR-10's 'data' and 'labels'": pickle.dumps({b"x": 1}, protocol=2),
        r"'data' is ndarray \(2, 768\)": pickle.dumps({b"data": np.zeros((2, 768), np.uint8), b"labels": [0, 1]}, protocol=2),
        "labels outside 0..9": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, protocol=2),
        "truncated or corrupt": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)[:-40],
    }
    for expected, content in cases.items():
        (folder / "test_batch").write_bytes(content)
        probed, loaded = probe_then_load("cifar10", "test", tmp_path, no_decoding)
        assert probed[0].startswith("UserError: ") and re.search(expected, probed[0]), probed
        if expected != "truncated or corrupt":  # the probe cannot quote the unpickler's own words
            assert probed == loaded
        else:
            assert re.search(expected, loaded[0])


def write_idx(path: Path, dims: tuple[int, ...], payload: bytes, compress: bool) -> None:
    data = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + payload
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [False, True])
def test_probe_of_mnist_counts_complete_images_with_the_loaders_checks(tmp_path, compress, no_decoding):
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", (5, 28, 28), bytes(3 * 784 + 100), compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", (5,), bytes([1, 2, 3, 4, 5]), compress)
    probed, loaded = probe_then_load("mnist", "test", tmp_path, no_decoding)
    assert probed == loaded and probed[0][1] == 3 and "using 3 of 5 images" in probed[1][0]
    for dims, labels, expected in [
        ((5, 20, 20), bytes(5), "holds 20x20 images"),
        ((4, 28, 28), bytes(5), "declares 4 images but"),
        ((5, 28, 28), bytes([0, 1, 12, 0, 0]), "has label 12"),
    ]:
        write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", dims, bytes(dims[0] * dims[1] * dims[2]), compress)
        write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", (5,), labels, compress)
        probed, loaded = probe_then_load("mnist", "test", tmp_path, no_decoding)
        assert probed == loaded and expected in probed[0]


def test_probe_of_mnist_never_holds_the_decompressed_images(tmp_path, monkeypatch):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", (3000, 28, 28), bytes(3000 * 784), True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", (3000,), bytes(3000), True)
    monkeypatch.setattr(mnist, "READ_CHUNK", 4096)
    real = mnist.iter_file_bytes
    sizes = []

    def recorded(path):
        for chunk in real(path):
            sizes.append(len(chunk))
            yield chunk

    monkeypatch.setattr(mnist, "iter_file_bytes", recorded)
    assert probe_dataset("mnist", "test", tmp_path)[1] == 3000
    assert max(sizes) <= 4096 and sum(sizes) > 3000 * 784


def make_folder_tree(root: Path, classes: dict[str, int]) -> None:
    for label, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for number in range(count):
            (root / name / f"{number}.png").write_bytes(png(seed=10 * label + number))


def test_probe_matches_the_load_for_folders_and_archives(tmp_path, no_decoding):
    make_folder_tree(tmp_path / "if" / "train", {"b": 2, "a": 1})
    make_folder_tree(tmp_path / "if" / "val", {"b": 1, "a": 3})
    make_folder_tree(tmp_path / "cf" / "test", {name: 1 + (i % 2) for i, name in enumerate(cifar10.CLASSES)})
    (tmp_path / "arch").mkdir()
    write_tar_gz(tmp_path / "arch" / "val.tar.gz", {f"val/{n}/{i}.png": png(seed=i) for n in ("x", "y") for i in range(2)})
    cases = [
        ("imagefolder", "train", tmp_path / "if", {"image_size": 16}),
        ("imagefolder", "test", tmp_path / "if", {}),
        ("imagefolder", "test", tmp_path / "if" / "val", {"image_size": 8}),  # the root as the class tree
        ("imagefolder", "test", tmp_path / "arch", {"image_size": 8}),
        ("cifar10", "test", tmp_path / "cf", {}),
    ]
    for name, split, root, kwargs in cases:
        probed, loaded = probe_then_load(name, split, root, no_decoding, **kwargs)
        assert probed == loaded and not isinstance(probed[0], str), (name, split, root, probed)


BAD_PATHS = {
    "unknown dataset": ("svhn", "test", lambda tmp: tmp, {}),
    "unknown split": ("mnist", "val", lambda tmp: tmp, {}),
    "no root": ("cifar10", "test", lambda tmp: None, {}),
    "missing root": ("mnist", "test", lambda tmp: tmp / "absent", {}),
    "root is a file": ("imagefolder", "test", lambda tmp: (tmp / "f").write_text("x") and tmp / "f", {}),
    "wrong image size": ("cifar10", "test", lambda tmp: tmp, {"image_size": 64}),
    "bad imagefolder size": ("imagefolder", "test", lambda tmp: tmp, {"image_size": 0}),
    "no mnist files": ("mnist", "test", lambda tmp: tmp, {}),
    "no cifar data": ("cifar10", "test", lambda tmp: tmp, {}),
    "unextracted cifar": ("cifar10", "test", lambda tmp: (tmp / "cifar-10-python.tar.gz").write_bytes(b"") or tmp, {}),
    "no imagefolder data": ("imagefolder", "test", lambda tmp: tmp, {}),
    "missing split": ("imagefolder", "test", lambda tmp: make_folder_tree(tmp / "train", {"a": 1}) or tmp, {}),
    "empty class": ("imagefolder", "test", lambda tmp: (tmp / "test" / "a").mkdir(parents=True) or tmp, {}),
    "split classes differ": (
        "imagefolder", "test",
        lambda tmp: make_folder_tree(tmp / "train", {"a": 1, "b": 1}) or make_folder_tree(tmp / "test", {"a": 1}) or tmp, {},
    ),
    "missing batches": ("cifar10", "train", lambda tmp: write_batch(tmp / "test_batch", 2) or tmp, {}),
    "wrong cifar classes": ("cifar10", "test", lambda tmp: make_folder_tree(tmp / "test", {"cat": 1, "dog": 1}) or tmp, {}),
    "corrupt archive": ("cifar10", "test", lambda tmp: (tmp / "test.tar.gz").write_bytes(b"\x1f\x8b" + bytes(100)) and tmp, {}),
    "empty archive": ("imagefolder", "test", lambda tmp: write_tar_gz(tmp / "test.tar.gz", {"a.txt": b"x"}) and tmp, {}),
}


@pytest.mark.parametrize("case", BAD_PATHS)
def test_probe_raises_the_loaders_user_error_for_bad_paths(tmp_path, case, no_decoding):
    name, split, make_root, kwargs = BAD_PATHS[case]
    data = tmp_path / "data"
    data.mkdir()
    root = make_root(data)
    probed, loaded = probe_then_load(name, split, root, no_decoding, **kwargs)
    assert probed == loaded and probed[0].startswith("UserError: ")


def test_probe_dataset_is_exported_and_covers_every_dataset():
    import rrcm.data

    assert "probe_dataset" in rrcm.data.__all__ and set(DATASETS) == {"digits", "mnist", "cifar10", "imagefolder"}
