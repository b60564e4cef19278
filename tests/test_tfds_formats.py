"""The in-memory pipeline reads a tfds copy prepared as ArrayRecord without TensorFlow, and gets exactly the
arrays and label order the TFRecord copy gives through TensorFlow.

The two readers decode differently (PIL here, TensorFlow's decode_image there) and read different files,
so equal arrays mean equal pixels, labels and order, not one code path read twice.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.data import tfds_data
from train.data.testing import write_fake_dataset

REPO = Path(__file__).resolve().parents[1]


def _both_formats(root: Path, **kwargs) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{format: {split: (images, labels)}} of one fake dataset written in each format."""
    out = {}
    for file_format in ("tfrecord", "array_record"):
        data_dir = str(root / file_format)
        name = write_fake_dataset(data_dir, file_format=file_format, **kwargs)
        builder = tfds_data.get_builder(name, data_dir)
        assert tfds_data.reads_without_tensorflow(builder) == (file_format == "array_record")
        out[file_format] = {split: tfds_data.load_split(builder, split) for split in ("train", "test")}
    return out


@pytest.mark.parametrize("image_shape", [(32, 32, 3), (28, 28, 1)], ids=["rgb", "grayscale"])
def test_array_record_split_equals_tfrecord_split(tmp_path, image_shape):
    read = _both_formats(tmp_path, num_train=40, num_test=12, image_shape=image_shape)
    for split, n in (("train", 40), ("test", 12)):
        (tf_images, tf_labels), (ar_images, ar_labels) = read["tfrecord"][split], read["array_record"][split]
        assert ar_images.shape == (n, *image_shape) and ar_images.dtype == np.uint8
        assert ar_labels.dtype == tf_labels.dtype == np.int32
        np.testing.assert_array_equal(ar_images, tf_images)
        np.testing.assert_array_equal(ar_labels, tf_labels)
    # Not a constant split that any reader would reproduce: labels and images vary.
    assert len(set(read["array_record"]["train"][1].tolist())) > 3
    assert read["array_record"]["train"][0].std() > 50


PROBE = """
import sys
from train.data import tfds_data
from train.data.testing import write_fake_dataset
name = write_fake_dataset(sys.argv[1], num_train=24, num_test=8, file_format="array_record")
images, labels = tfds_data.load_split(tfds_data.get_builder(name, sys.argv[1]), "train")
assert images.shape == (24, 32, 32, 3), images.shape
print(sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")))
"""


def test_array_record_is_written_and_read_without_importing_tensorflow(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_tfrecord_copy_without_tensorflow_is_one_line(tmp_path, monkeypatch):
    name = write_fake_dataset(str(tmp_path), num_train=16, num_test=8)
    builder = tfds_data.get_builder(name, str(tmp_path))
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    with pytest.raises(tfds_data.DatasetUnavailableError) as e:
        tfds_data.load_split(builder, "train")
    message = str(e.value)
    assert "\n" not in message and "needs TensorFlow" in message and "pip install tensorflow-cpu" in message
    assert f"TFRecord copy of {name!r} in {tmp_path}" in message and "--file_format=array_record" in message


@pytest.mark.slow
def test_offline_cifar10_reads_the_same_from_both_formats(offline_cifar10):
    """The offline CIFAR-10 copy prepared by tfds's own builder as TFRecord and as ArrayRecord."""
    tfrecord = tfds_data.get_builder("cifar10", offline_cifar10("tfds"))
    array_record = tfds_data.get_builder("cifar10", offline_cifar10("tfds", "--file-format", "array_record"))
    assert tfds_data.reads_without_tensorflow(array_record) and not tfds_data.reads_without_tensorflow(
        tfrecord
    )
    for split, n in (("test", 10_000), ("train", 50_000)):
        images, labels = tfds_data.load_split(array_record, split)
        assert images.shape == (n, 32, 32, 3) and np.bincount(labels).tolist() == [n // 10] * 10
        reference_images, reference_labels = tfds_data.load_split(tfrecord, split)
        np.testing.assert_array_equal(labels, reference_labels)
        np.testing.assert_array_equal(images, reference_images)
