"""The data layer: the built-in digits, image folders, splits, loaders and their errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import backbones
from backbones.data.datasets import open_dataset
from backbones.data.digits import load_digits_arrays
from backbones.data.folders import UNLABELLED, scan_image_folder
from backbones.data.images import BadImageError, decode_image
from backbones.data.loaders import ShardSampler, make_loader, set_loader_epoch

from .image_folders import make_image_folder, write_corrupt_image


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    return backbones.create_model("resnet18", num_classes=10)


def test_digits_split_has_scikit_learns_sizes_is_stratified_and_seeded(resnet18) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    reference_train, reference_val = train_test_split(labels, test_size=0.2, stratify=labels, random_state=0)
    train = open_dataset("digits", "train", model=resnet18, seed=0)
    val = open_dataset("digits", "val", model=resnet18, seed=0)
    assert (len(train), len(val)) == (len(reference_train), len(reference_val))
    train_ids, val_ids = {s for s, _ in train.samples}, {s for s, _ in val.samples}
    assert not train_ids & val_ids and len(train_ids | val_ids) == len(labels)
    val_counts = torch.bincount(torch.tensor([label for _, label in val.samples]), minlength=10)
    assert (val_counts - torch.bincount(torch.from_numpy(reference_val), minlength=10)).abs().max() <= 1
    assert val.samples == open_dataset("digits", "val", model=resnet18, seed=0).samples
    assert val.samples != open_dataset("digits", "val", model=resnet18, seed=1).samples


@pytest.mark.parametrize("arch", ["resnet18", "inception_v3"])
def test_digits_are_upsampled_to_the_models_size_and_normalised_with_its_statistics(arch: str) -> None:
    with torch.device("meta"):
        model = backbones.create_model(arch)
    dataset = open_dataset("digits", "all", model=model)
    image, label = dataset[5]
    size = max(32, model.min_input_size)
    assert image.shape == (model.in_chans, size, size) and label == int(load_digits_arrays()[1][5])
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(-1, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(-1, 1, 1)
    grey = image * std + mean
    assert torch.allclose(grey[0], grey[1], atol=1e-6) and torch.allclose(grey[1], grey[2], atol=1e-6)
    assert grey.min() >= -1e-6 and grey.max() <= 1 + 1e-6 and grey.max() > 0.5  # ink on a black ground


def test_digits_without_scikit_learn_name_the_extra_to_install(monkeypatch) -> None:
    load_digits_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        with pytest.raises(ImportError, match=r"pip install backbones\[data\]"):
            open_dataset("digits", "train", model="resnet18")
    finally:
        load_digits_arrays.cache_clear()


def test_folder_labels_come_from_top_level_class_folders_in_sorted_order(tmp_path: Path) -> None:
    make_image_folder(tmp_path, ("red", "blue"), per_class=2)
    (tmp_path / "red" / "deeper").mkdir()
    (tmp_path / "red" / "0.png").rename(tmp_path / "red" / "deeper" / "0.png")
    (tmp_path / ".hidden").mkdir()
    write_corrupt_image(tmp_path / ".hidden" / "x.png")
    scan = scan_image_folder(tmp_path)
    assert scan.classes == ["blue", "red"]
    assert scan.samples == [("blue/0.png", 0), ("blue/1.png", 0), ("red/1.png", 1), ("red/deeper/0.png", 1)]


def test_a_folder_with_loose_images_is_unlabelled_and_cannot_be_split_for_training(tmp_path: Path, resnet18) -> None:
    make_image_folder(tmp_path, ("red", "blue"), per_class=2)
    (tmp_path / "red" / "0.png").rename(tmp_path / "loose.png")
    everything = open_dataset(tmp_path, "all", model=resnet18, image_size=32)
    assert everything.classes == [] and {label for _, label in everything.samples} == {UNLABELLED}
    assert everything[0][0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"outside any class subfolder \(e\.g\. loose\.png\).*one subfolder per class"):
        open_dataset(tmp_path, "train", model=resnet18)


def test_folder_training_items_are_random_crops_and_evaluation_items_are_fixed(tmp_path: Path, resnet18) -> None:
    make_image_folder(tmp_path, per_class=3)
    train = open_dataset(tmp_path, "train", model=resnet18, image_size=32, val_fraction=0.34)
    val = open_dataset(tmp_path, "val", model=resnet18, image_size=32, val_fraction=0.34)
    assert len(train) + len(val) == 6 and {label for _, label in val.samples} == {0, 1}
    assert train[0][0].shape == val[0][0].shape == (3, 32, 32)
    assert torch.equal(val[0][0], val[0][0])
    torch.manual_seed(0)
    crops = [train[0][0] for _ in range(4)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])


def test_an_unreadable_image_is_named_or_skipped_and_reported(tmp_path: Path, resnet18) -> None:
    make_image_folder(tmp_path, per_class=2)
    write_corrupt_image(tmp_path / "red" / "broken.png")
    dataset = open_dataset(tmp_path, "all", model=resnet18, image_size=32)
    index = [s for s, _ in dataset.samples].index("red/broken.png")
    with pytest.raises(BadImageError, match=r"cannot read image .*red/broken\.png.*skip_bad_images=True"):
        dataset[index]
    skipping = open_dataset(tmp_path, "all", model=resnet18, image_size=32, skip_bad_images=True)
    assert skipping.skipped == ["red/broken.png"] and len(skipping) == 4


def test_an_unreadable_image_in_a_loader_worker_is_still_one_line_naming_the_file(tmp_path: Path, resnet18) -> None:
    write_corrupt_image(tmp_path / "a" / "broken.png")
    loader = make_loader(open_dataset(tmp_path, "all", model=resnet18), 1, training=False, workers=1)
    with pytest.raises(BadImageError) as caught:
        next(iter(loader))
    assert str(caught.value).startswith(f"cannot read image {tmp_path / 'a' / 'broken.png'}")
    assert "\n" not in str(caught.value)


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    with pytest.raises(BadImageError, match=r"40x30 pixels, more than the limit of 1,000"):
        decode_image(tmp_path / "big.png", max_pixels=1000)
    assert decode_image(tmp_path / "big.png", max_pixels=1200).size == (40, 30)


def test_evaluation_shards_cover_every_sample_once_across_processes() -> None:
    shards = [list(ShardSampler(11, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))


def test_training_order_is_seeded_per_epoch_and_repeats(resnet18) -> None:
    dataset = open_dataset("digits", "val", model=resnet18)
    loader = make_loader(dataset, 32, training=True, seed=3)

    def labels_of_epoch(epoch: int) -> list[int]:
        set_loader_epoch(loader, epoch)
        return [label for _, labels in loader for label in labels.tolist()]

    first = labels_of_epoch(0)
    assert len(first) == 352  # 11 full batches of 32, the last incomplete one dropped
    assert labels_of_epoch(1) != first and labels_of_epoch(0) == first


def test_a_batch_larger_than_the_dataset_is_refused(resnet18) -> None:
    dataset = open_dataset("digits", "val", model=resnet18)
    with pytest.raises(ValueError, match=r"batch size 400 is larger than the 360 training images.*at most 360"):
        make_loader(dataset, 400, training=True)
    assert len(make_loader(dataset, 400, training=False)) == 1  # evaluation keeps the partial batch


def test_an_image_size_below_the_models_minimum_is_refused(resnet18) -> None:
    with pytest.raises(ValueError, match=r"image size 16 is below the model's minimum input of 32x32"):
        open_dataset("digits", "train", model=resnet18, image_size=16)


@pytest.mark.parametrize("problem", ["missing", "empty", "one class"])
def test_folder_problems_each_get_a_clear_error(tmp_path: Path, resnet18, problem: str) -> None:
    folder = tmp_path / "images"
    if problem == "empty":
        folder.mkdir()
    elif problem == "one class":
        make_image_folder(folder, ("red",), per_class=2)
    expected = {"missing": "does not exist", "empty": "no images in", "one class": "has one class only \\('red'\\)"}
    with pytest.raises((FileNotFoundError, ValueError), match=expected[problem]):
        open_dataset(folder, "train", model=resnet18)
