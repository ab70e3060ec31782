import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file

from edt_lab.data import (DIGIT_NAMES, LATENT_SCALE, Digits, FeatureFolder, ImageFolder, diffusion_split,
                          extract_features, in_memory_tensors, load_digits, make_dataset, split_digits)


def test_digits_shape_range_and_labels():
    images, labels = load_digits()
    assert images.shape == (5000, 1, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (5000,) and labels.dtype == torch.int64
    assert images.min() == -1.0 and images.max() == 1.0
    # The 2-pixel padding is background.
    assert (images[:, :, :2] == -1).all() and (images[:, :, :, -2:] == -1).all()
    assert torch.bincount(labels).tolist() == [500] * 10
    assert DIGIT_NAMES == [str(i) for i in range(10)]


def test_split_digits_holds_out_100_of_each_class():
    _, labels = load_digits()
    train, held_out = split_digits(labels)
    assert len(train) == 4000 and len(held_out) == 1000
    assert not set(train.tolist()) & set(held_out.tolist())
    assert torch.bincount(labels[held_out]).tolist() == [100] * 10


def _write_images(root):
    """Two classes, images of several sizes, modes and formats."""
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(root / "cat" / "a.png")
    Image.new("L", (20, 30), 255).save(root / "cat" / "b.jpg")
    Image.new("RGB", (100, 100), (0, 0, 255)).save(root / "dog" / "c.bmp")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_diffusion_split_holds_out_50_of_each_class_inside_the_classifiers_100():
    _, labels = load_digits()
    train, held_out = diffusion_split(labels)
    assert len(train) == 4500 and torch.bincount(labels[held_out]).tolist() == [50] * 10
    assert set(held_out.tolist()) <= set(split_digits(labels)[1].tolist())  # never seen by the classifier either
    digits = Digits()
    assert torch.equal(digits.tensors[1], labels[train])  # --data mnist trains on exactly the 4,500


def test_image_folder(tmp_path):
    _write_images(tmp_path)
    dataset = ImageFolder(tmp_path, image_size=16)
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 3
    image, label = dataset[0]
    assert image.shape == (3, 16, 16) and label == 0
    # A plain red image stays plain red after the crop and resize.
    assert torch.allclose(image, torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1), atol=0.02)
    grey, _ = dataset[1]
    assert grey.shape == (3, 16, 16) and torch.allclose(grey, torch.ones_like(grey), atol=0.02)
    blue, label = dataset[2]
    assert label == 1 and torch.allclose(blue, torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1), atol=0.02)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolder(tmp_path / "missing", 16)
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(tmp_path, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(tmp_path, 16)
    _write_images(tmp_path / "two")
    with pytest.raises(ValueError, match="2 class folders but the model has only 1"):
        ImageFolder(tmp_path / "two", 16, num_classes=1)


@pytest.fixture
def tiny_vae(tmp_path):
    """A random AutoencoderKL with 4 latent channels and 8x down-sampling, saved to and loaded from a temp folder."""
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4, layers_per_block=1,
        block_out_channels=(4, 4, 4, 4), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    vae.save_pretrained(tmp_path / "vae")
    return AutoencoderKL.from_pretrained(tmp_path / "vae")


def test_extract_features_round_trip(tmp_path, tiny_vae):
    _write_images(tmp_path / "images")
    images = ImageFolder(tmp_path / "images", 32)
    features = extract_features(images, tiny_vae, tmp_path / "features", batch_size=2, seed=0, flip=False)
    assert isinstance(features, FeatureFolder)

    loaded = FeatureFolder(tmp_path / "features")
    assert len(loaded) == 3 and loaded.classes == ["cat", "dog"] and loaded.num_classes == 2
    assert loaded.latents.shape == (3, 4, 4, 4) and loaded.labels.tolist() == [0, 0, 1]
    meta = json.loads((tmp_path / "features" / "meta.json").read_text())
    assert meta["vae"].endswith("vae")
    # The first batch holds the scaled posterior samples that the same seed gives.
    with torch.no_grad():
        posterior = tiny_vae.encode(torch.stack([images[0][0], images[1][0]])).latent_dist
    expected = posterior.sample(generator=torch.Generator().manual_seed(0)) * LATENT_SCALE
    assert torch.allclose(loaded.latents[:2], expected, atol=1e-6)
    assert not torch.allclose(loaded.latents[:2], posterior.mean * LATENT_SCALE, atol=1e-6)
    latent, label = loaded[2]
    assert latent.shape == (4, 4, 4) and label == 1


def test_extract_features_flips_half_the_images_once(tmp_path, tiny_vae):
    _write_images(tmp_path / "images")
    images = ImageFolder(tmp_path / "images", 32)
    extract_features(images, tiny_vae, tmp_path / "features", batch_size=2, seed=0)
    flipped = load_file(tmp_path / "features" / "latents.safetensors")["flipped"].bool()
    # The seed draws the flips, each image once: a mix here, recorded beside the latents.
    assert flipped.tolist() == (torch.rand(3, generator=torch.Generator().manual_seed(0)) < 0.5).tolist()
    assert 0 < flipped.sum() < 3
    batch = torch.stack([images[0][0], images[1][0]])
    batch = torch.where(flipped[:2].view(-1, 1, 1, 1), batch.flip(-1), batch)
    with torch.no_grad():
        posterior = tiny_vae.encode(batch).latent_dist
    expected = posterior.sample(generator=torch.Generator().manual_seed(0)) * LATENT_SCALE
    torch.testing.assert_close(FeatureFolder(tmp_path / "features").latents[:2], expected, atol=1e-6, rtol=0)


def test_extract_features_checks_channels(tmp_path, tiny_vae):
    with pytest.raises(ValueError, match="3-channel"):
        extract_features(make_dataset("mnist"), tiny_vae, tmp_path)


def test_feature_folder_missing(tmp_path):
    with pytest.raises(ValueError, match="latents.safetensors and meta.json"):
        FeatureFolder(tmp_path)


def test_make_dataset(tmp_path, tiny_vae):
    digits = make_dataset("mnist")
    assert len(digits) == 4500 and digits.classes == DIGIT_NAMES  # the 500 held-out digits are not trained on
    image, label = digits[0]
    assert image.shape == (1, 32, 32) and label.item() == 0

    _write_images(tmp_path / "images")
    images = make_dataset(f"images:{tmp_path / 'images'}", image_size=32, num_classes=1000)
    assert len(images) == 3 and images[0][0].shape == (3, 32, 32)
    extract_features(images, tiny_vae, tmp_path / "features")
    features = make_dataset(f"features:{tmp_path / 'features'}", image_size=32)
    assert len(features) == 3
    # What a trainer may index on its device: the digits and the latents are held in memory, image files are not.
    assert in_memory_tensors(digits)[0].shape == (4500, 1, 32, 32)
    assert in_memory_tensors(features)[0] is features.latents and in_memory_tensors(features)[1] is features.labels
    assert in_memory_tensors(images) is None

    with pytest.raises(ValueError, match="expected 'mnist', 'images:DIR'"):
        make_dataset("imagenet")
    with pytest.raises(ValueError, match="needs an image size"):
        make_dataset(f"images:{tmp_path / 'images'}")
    with pytest.raises(ValueError, match="not the 8x8"):
        make_dataset(f"features:{tmp_path / 'features'}", image_size=64)
    with pytest.raises(ValueError, match="10 classes but the model has only 2"):
        make_dataset("mnist", num_classes=2)


def test_center_crop_keeps_the_middle(tmp_path):
    # A wide image: left third black, middle white, right third black; the square centre crop is white.
    array = np.zeros((30, 90, 3), dtype=np.uint8)
    array[:, 30:60] = 255
    (tmp_path / "a").mkdir()
    Image.fromarray(array).save(tmp_path / "a" / "wide.png")
    image, _ = ImageFolder(tmp_path, 8)[0]
    assert image[:, :, 2:6].min() > 0.9
