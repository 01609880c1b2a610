"""3-D models: ``monai:NAME`` specs, torchvision video models, 3-D preprocessing, ``layers``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shortcut_detect.cli import main
from shortcut_detect.data.synthetic import SmallCNN
from shortcut_detect.data.transforms import Preprocessing, preprocessing_from_options
from shortcut_detect.models import ModelLoadError, UnknownInputSizeError, load_model

monai = pytest.importorskip("monai")


def test_monai_network_is_built_with_dims_channels_and_classes():
    loaded = load_model(
        "monai:DenseNet121", spatial_dims=3, in_channels=1, num_classes=3, resize=[32, 32, 32]
    )
    assert loaded.spatial_dims == 3 and loaded.input_size == (32, 32, 32)
    assert loaded.in_channels == 1 and loaded.num_classes == 3
    conv = loaded.model.features.conv0
    assert isinstance(conv, torch.nn.Conv3d) and conv.in_channels == 1
    assert loaded.default_layer is not None
    assert "random weights" in " ".join(loaded.notes)


def test_monai_resnet_takes_its_own_keyword_names_and_weights_from_a_file(tmp_path):
    # MONAI's ResNet family names the options n_input_channels / num_classes via **kwargs.
    first = load_model("monai:resnet10", in_channels=1, num_classes=4, resize=[16])
    path = tmp_path / "r10.pt"
    torch.save(first.model.state_dict(), path)
    again = load_model("monai:resnet10", in_channels=1, weights=str(path), resize=[16])
    assert again.num_classes == 4
    assert "4 classes, read from the weights file" in again.notes
    example = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again.model(example), first.model(example))


def test_monai_errors_say_what_to_do():
    with pytest.raises(ModelLoadError, match="MONAI has no network 'DenseNet12'; did you mean"):
        load_model("monai:DenseNet12", resize=[32])
    with pytest.raises(ModelLoadError, match="weights as a file"):
        load_model("monai:DenseNet121", weights="DEFAULT", resize=[32])
    with pytest.raises(UnknownInputSizeError, match="resize=D,H,W"):
        load_model("monai:DenseNet121", num_classes=2)
    with pytest.raises(ModelLoadError, match="spatial_dims= and in_channels= build monai"):
        load_model("torchvision:resnet18", spatial_dims=3, resize=[32])


def test_monai_2d_network_is_a_2d_model():
    loaded = load_model("monai:DenseNet121", spatial_dims=2, num_classes=2, resize=[64])
    assert loaded.input_size == (64, 64) and loaded.spatial_dims == 2


def test_torchvision_video_model_takes_clips_of_its_recipe():
    loaded = load_model("torchvision:r3d_18", num_classes=2)
    assert loaded.input_size == (16, 112, 112) and loaded.in_channels == 3
    assert loaded.default_layer == "layer4"
    assert loaded.transform.mean == pytest.approx((0.43216, 0.394666, 0.37645))
    assert any("no centre crop" in note for note in loaded.notes)
    small = load_model("torchvision:r3d_18", num_classes=2, resize=[8, 32, 32])
    assert small.input_size == (8, 32, 32)


def test_a_factory_3d_model_is_recognised_by_its_first_convolution(tmp_path):
    path = tmp_path / "cnn3d.pt"
    torch.save(SmallCNN(2, in_channels=1, width=4, spatial_dims=3), path)
    loaded = load_model(str(path), trust_pickle=True, resize=[12, 16, 20])
    assert loaded.input_size == (12, 16, 20)
    assert loaded.default_layer == "features"


def test_volume_preprocessing_resizes_in_3d_and_normalises():
    preprocessing = Preprocessing(size=(4, 6), depth=2, channels=3, mean=(0.5,), std=(0.25,))
    volume = np.linspace(0, 1, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    tensor = preprocessing.volume(volume)
    assert tensor.shape == (3, 2, 4, 6)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(volume)[None, None], size=(2, 4, 6), mode="trilinear"
    )[0, 0]
    torch.testing.assert_close(tensor[1], (expected - 0.5) / 0.25)
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[:4] = True
    resized = preprocessing.volume_mask(mask)
    assert resized.shape == (2, 4, 6) and resized[0].all() and not resized[1].any()
    assert "volumes resized to 2x4x6" in preprocessing.describe()
    assert Preprocessing.from_dict(preprocessing.to_dict()).input_shape == (2, 4, 6)


def test_volume_preprocessing_refuses_2d_options():
    with pytest.raises(ValueError, match="crop= is for 2-D images"):
        preprocessing_from_options(base=None, channels=1, resize=32, crop=28, spatial_dims=3)
    with pytest.raises(ValueError, match="needs resize=D,H,W"):
        preprocessing_from_options(base=None, channels=1, resize=[32, 32], spatial_dims=3)
    with pytest.raises(ValueError, match="2-D recipe"):
        preprocessing_from_options(base=None, channels=1, preset="imagenet", spatial_dims=3)
    with pytest.raises(ValueError, match="centre crops and native sizes are for 2-D"):
        Preprocessing(size=(8, 8), depth=4, crop=True)


def test_layers_lists_the_3d_layers_with_their_shapes(capsys):
    status = main(
        ["layers", "--model", "monai:DenseNet121", "--spatial-dims", "3", "--resize", "32,32,32"]
    )
    output = capsys.readouterr().out
    assert status == 0
    assert "input 1x32x32x32" in output
    assert "features.conv0" in output and "64x16x16x16" in output


def test_explain_refuses_a_2d_image_for_a_3d_model(tmp_path, capsys):
    path = tmp_path / "cnn3d.pt"
    torch.save(SmallCNN(2, in_channels=1, width=4, spatial_dims=3), path)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (16, 16)).save(image)
    status = main(["explain", str(image), "--model", str(path), "--trust-pickle", "--resize", "8"])
    assert status != 0
    error = capsys.readouterr().err
    assert f"{image} is not a volume, and --model {path} takes volumes" in error
    assert "DICOM series folders" in error
