"""The paper's augmentation and test-time views, on real JPEG photographs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import sklearn
import torch
from PIL import Image

from vgg.transforms import (
    CropBox,
    PixelStatistics,
    TrainingAugmentation,
    center_crop_box,
    colour_shift,
    decode_crop,
    decode_crops_on_device,
    decode_rescaled,
    multi_crop,
    prepare_training_batch,
    random_crop_box,
    rescale_then_crop,
    rescaled_size,
    to_model_input,
)

# Two real photographs (640x427) that scikit-learn ships with its package.
PHOTOS = sorted((Path(sklearn.__file__).parent / "datasets" / "images").glob("*.jpg"))


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """The photographs as stored (short side 427) and enlarged to short side 854,
    so that S = 256 takes the DCT-domain (draft) decoding path."""
    out = {}
    for path in PHOTOS:
        image = Image.open(path)
        out[path.stem] = path.read_bytes()
        out[f"{path.stem}-large"] = _jpeg(image.resize((image.width * 2, image.height * 2)))
    return out


def _mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("scale", [224, 256, 384, (256, 512)])
def test_fast_crop_matches_rescale_then_crop(photos, scale):
    rng = np.random.default_rng(0)
    differences = []
    for data in photos.values():
        image = Image.open(io.BytesIO(data))
        for _ in range(6):
            box = random_crop_box(image.height, image.width, scale, 224, rng)
            fast, reference = decode_crop(data, box), rescale_then_crop(data, box)
            assert fast.shape == reference.shape == (224, 224, 3)
            assert fast.dtype == np.uint8
            differences.append(_mean_abs_difference(fast, reference))
    # Interpolation differs at the crop's border and, for draft decoding, by the
    # DCT-domain downscale (at most 1.9 seen); 2.5 grey levels in 255 is far below what a wrong box
    # (one pixel off: 5 to 10) gives on these photos (checked below).
    assert max(differences) < 2.5, differences


def test_a_misplaced_crop_is_detected_by_the_same_bound(photos):
    data = photos["china"]
    box = CropBox(scale=256, top=10, left=40, size=224)
    shifted = CropBox(scale=256, top=10, left=41, size=224)  # one pixel off
    assert _mean_abs_difference(decode_crop(data, shifted), rescale_then_crop(data, box)) > 2.5


def test_flipped_crop_is_the_mirrored_crop(photos):
    data = photos["flower"]
    box = CropBox(scale=300, top=20, left=60, size=224)
    flipped = CropBox(scale=300, top=20, left=60, size=224, flip=True)
    assert np.array_equal(decode_crop(data, flipped), decode_crop(data, box)[:, ::-1])


def test_scale_jittering_is_uniform_and_crops_stay_inside():
    rng = np.random.default_rng(1)
    height, width = 375, 500
    boxes = [random_crop_box(height, width, (256, 512), 224, rng) for _ in range(8000)]
    scales = np.array([b.scale for b in boxes])
    assert scales.min() == 256 and scales.max() == 512
    counts, _ = np.histogram(scales, bins=4, range=(256, 513))
    # Each quarter of [256, 512] holds a quarter of the draws (binomial sd ~ 39).
    assert np.all(np.abs(counts - 2000) < 200), counts
    for box in boxes:
        rescaled_h, rescaled_w = rescaled_size(height, width, box.scale)
        assert min(rescaled_h, rescaled_w) == box.scale
        assert 0 <= box.top <= rescaled_h - 224 and 0 <= box.left <= rescaled_w - 224
    flips = np.mean([b.flip for b in boxes])
    assert abs(flips - 0.5) < 0.03
    # Offsets reach both edges of the rescaled image.
    fixed = [random_crop_box(height, width, 256, 224, rng) for _ in range(4000)]
    lefts = [b.left for b in fixed]
    assert min(lefts) == 0 and max(lefts) == rescaled_size(height, width, 256)[1] - 224


def test_fixed_scale_never_changes_and_too_small_scale_is_refused():
    rng = np.random.default_rng(2)
    assert {random_crop_box(300, 400, 384, 224, rng).scale for _ in range(50)} == {384}
    with pytest.raises(ValueError, match="smaller than the crop size"):
        random_crop_box(300, 400, 200, 224, rng)


def test_colour_shift_follows_the_eigenvalues():
    stats = PixelStatistics.imagenet()
    shifts = colour_shift(20000, stats, generator=torch.Generator().manual_seed(0))
    eigenvectors = torch.tensor(stats.eigenvectors)
    # Projected on eigenvector i, the shift is 255 * a_i * lambda_i with a_i ~ N(0, 0.1).
    projected = shifts @ eigenvectors.T
    expected = 255 * 0.1 * torch.tensor(stats.eigenvalues)
    assert torch.allclose(projected.std(0), expected, rtol=0.05)
    assert projected.mean(0).abs().max() < 0.05 * expected.max()


def test_prepare_training_batch_shape_dtype_and_mean():
    stats = PixelStatistics(
        mean_rgb=(100.0, 110.0, 120.0),
        eigenvalues=(0.2, 0.02, 0.004),
        eigenvectors=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    )
    images = torch.randint(0, 256, (4, 32, 48, 3), dtype=torch.uint8)
    plain = prepare_training_batch(images, stats, colour_shift_std=0)
    assert plain.shape == (4, 3, 32, 48) and plain.dtype == torch.float32
    assert torch.equal(plain[:, 0], images[..., 0].float() - 100.0)
    assert torch.equal(plain[:, 2], images[..., 2].float() - 120.0)
    shifted = prepare_training_batch(images, stats, generator=torch.Generator().manual_seed(3))
    offsets = (shifted - plain).mean(dim=(2, 3))
    # One constant offset per image and channel, different between images.
    assert torch.allclose(shifted - plain, offsets[:, :, None, None].expand_as(plain), atol=1e-4)
    assert not torch.allclose(offsets[0], offsets[1])
    nhwc = prepare_training_batch(images, stats, colour_shift_std=0, channels_last=True)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)


def test_device_half_draws_only_on_the_cpu_generator(monkeypatch):
    """A CUDA run must not hand torch a CPU generator for a device draw: on a
    `meta` batch (no real device needed), every random draw must be a CPU
    tensor from the caller's CPU generator, and the result stays on `meta`."""
    draws = []
    real_randn = torch.randn

    def recording_randn(*args, **kwargs):
        tensor = real_randn(*args, **kwargs)
        draws.append((kwargs.get("generator"), tensor.device))
        return tensor

    monkeypatch.setattr(torch, "randn", recording_randn)
    generator = torch.Generator().manual_seed(0)
    images = torch.empty((4, 32, 32, 3), dtype=torch.uint8, device="meta")
    stats = PixelStatistics.imagenet()
    out = prepare_training_batch(images, stats, colour_shift_std=0.1, generator=generator)
    assert out.device.type == "meta" and out.shape == (4, 3, 32, 32)
    assert draws == [(generator, torch.device("cpu"))]
    # The same noise whatever the device: the CPU and GPU runs draw alike.
    cpu = prepare_training_batch(
        torch.zeros((4, 2, 2, 3), dtype=torch.uint8),
        stats,
        generator=torch.Generator().manual_seed(5),
    )
    again = colour_shift(4, stats, generator=torch.Generator().manual_seed(5), device="meta")
    assert again.device.type == "meta"
    assert torch.allclose(
        cpu[:, :, 0, 0] + torch.tensor(stats.mean_rgb),
        colour_shift(4, stats, generator=torch.Generator().manual_seed(5)),
    )


def test_training_augmentation_round_trips_its_draws_through_columns(photos):
    augmentation = TrainingAugmentation((64, 96), 48, colour_shift_std=0.0)
    jpegs = list(photos.values())
    sizes = [Image.open(io.BytesIO(data)).size for data in jpegs]
    boxes = augmentation.draw(
        [h for _, h in sizes], [w for w, _ in sizes], np.random.default_rng(0)
    )
    columns = augmentation.encode(boxes)
    assert set(columns) == set(TrainingAugmentation.COLUMNS)
    assert augmentation.decode_boxes(columns) == boxes
    assert all(64 <= box.scale <= 96 and box.size == 48 for box in boxes)
    crops = augmentation.decode(jpegs, boxes)
    assert crops.shape == (len(jpegs), 48, 48, 3) and crops.dtype == np.uint8
    on_device = augmentation.decode_on_device(jpegs, boxes, "cpu")
    assert on_device.shape == crops.shape
    assert (on_device.float() - torch.from_numpy(crops).float()).abs().mean() < 3.0
    stats = PixelStatistics.imagenet()
    finished = augmentation.finish(torch.from_numpy(crops), stats)
    assert torch.equal(
        finished, prepare_training_batch(torch.from_numpy(crops), stats, colour_shift_std=0)
    )


def test_to_model_input_with_torchvision_normalisation():
    images = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    x = to_model_input(images, (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255,) * 3)
    assert torch.allclose(x[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / 0.229)


def test_decode_rescaled_sets_the_shorter_side(photos):
    for data in photos.values():
        for q in (224, 256, 352):
            image = decode_rescaled(data, q)
            assert min(image.shape[:2]) == q and image.dtype == np.uint8
            assert image.shape[1] == round(q * 640 / 427)


def test_multi_crop_grid_has_corners_centre_and_flips(photos):
    image = decode_rescaled(photos["china"], 256)
    crops = multi_crop(image, 224)
    assert crops.shape == (50, 224, 224, 3)
    height, width = image.shape[:2]
    corners = [
        image[:224, :224],
        image[:224, width - 224 :],
        image[height - 224 :, :224],
        image[height - 224 :, width - 224 :],
    ]
    for corner in corners:
        assert any(np.array_equal(corner, crop) for crop in crops[:25])
    centre = center_crop_box(height, width, min(height, width), 224)
    assert centre == CropBox(min(height, width), (height - 224) // 2, (width - 224) // 2, 224)
    middle = image[16:240, (width - 224) // 2 : (width - 224) // 2 + 224]
    assert any(np.array_equal(middle, crop) for crop in crops[:25])
    assert np.array_equal(crops[25:], crops[:25, :, ::-1])


def test_device_decode_path_matches_the_cpu_path(photos):
    rng = np.random.default_rng(5)
    jpegs, boxes = [], []
    for data in photos.values():
        image = Image.open(io.BytesIO(data))
        for _ in range(3):
            jpegs.append(data)
            boxes.append(random_crop_box(image.height, image.width, (256, 512), 224, rng))
    on_device = decode_crops_on_device(jpegs, boxes, "cpu")
    assert on_device.shape == (len(jpegs), 224, 224, 3) and on_device.dtype == torch.uint8
    for crop, data, box in zip(on_device.numpy(), jpegs, boxes, strict=True):
        # torchvision's decoder and antialiased resize against Pillow's.
        assert _mean_abs_difference(crop, rescale_then_crop(data, box)) < 2.5
