"""extract_embeddings: the right features, batched, in inference mode, model left untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18

from shortcut_detect.data.synthetic import SmallCNN
from shortcut_detect.embeddings import EmbeddingExtractor, extract_embeddings, pool_features


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(10, 3, 48, 48, generator=torch.Generator().manual_seed(1))


def _penultimate(model: SmallCNN, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.flatten(model.pool(model.features(x)), 1).numpy()


def test_default_is_the_input_of_the_final_classifier(small_model, images):
    extractor = EmbeddingExtractor(small_model)
    embeddings = extractor(images)
    assert extractor.layer_name == "classifier"
    assert embeddings.shape == (10, 64) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, _penultimate(small_model, images), rtol=1e-5, atol=1e-6)


def test_batches_loaders_and_dict_batches_give_the_same_rows(small_model, images):
    reference = _penultimate(small_model, images)
    by_tensor = extract_embeddings(small_model, None, images, batch_size=3)
    by_array = extract_embeddings(small_model, None, images.numpy(), batch_size=4)
    loader = DataLoader(TensorDataset(images, torch.arange(10)), batch_size=4)
    by_loader = extract_embeddings(small_model, None, loader)
    dicts = [{"image": images[:6], "label": 0}, {"image": images[6:], "label": 1}]
    by_dict = extract_embeddings(small_model, None, dicts)
    for result in (by_tensor, by_array, by_loader, by_dict):
        np.testing.assert_allclose(result, reference, rtol=1e-5, atol=1e-6)
    single = extract_embeddings(small_model, None, images[0])
    np.testing.assert_allclose(single, reference[:1], rtol=1e-5, atol=1e-6)


def test_named_layer_is_pooled(small_model, images):
    with torch.no_grad():
        maps = small_model.features(images)
    avg = extract_embeddings(small_model, "features", images)
    np.testing.assert_allclose(avg, maps.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    peak = extract_embeddings(small_model, "features", images, pool="max")
    np.testing.assert_allclose(peak, maps.amax(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    flat = extract_embeddings(small_model, small_model.features[4], images, pool="flatten")
    assert flat.shape == (10, 32 * 24 * 24)
    custom = extract_embeddings(small_model, "features", images, pool=lambda t: t[:, :3, 0, 0])
    np.testing.assert_allclose(custom, maps[:, :3, 0, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_named_layer_skips_the_rest_of_the_forward_pass(images):
    class ExplodingHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            self.features(x)
            raise AssertionError("the head should not run")

    embeddings = extract_embeddings(ExplodingHead(), "features", images)
    assert embeddings.shape == (10, 4)


def test_resnet_default_equals_the_model_without_its_head():
    torch.manual_seed(0)
    model = resnet18(num_classes=5).eval()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    extractor = EmbeddingExtractor(model)
    embeddings = extractor(x)
    assert extractor.layer_name == "fc"
    head, model.fc = model.fc, nn.Identity()
    try:
        with torch.no_grad():
            expected = model(x).numpy()
    finally:
        model.fc = head
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-5)


class TinyViT(nn.Module):
    """Token model: patch embedding, one encoder layer, a head on the class token."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.block = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.block(tokens)[:, 0])


def test_token_models_default_and_token_pooling():
    torch.manual_seed(0)
    model = TinyViT().eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        tokens = model.block(
            torch.cat([model.cls.expand(4, -1, -1), model.patch(x).flatten(2).transpose(1, 2)], 1)
        )
    extractor = EmbeddingExtractor(model)
    np.testing.assert_allclose(extractor(x), tokens[:, 0].numpy(), rtol=1e-5, atol=1e-5)
    assert extractor.layer_name == "head"  # not a Linear inside the attention block
    mean = extract_embeddings(model, "block", x, pool="tokens")
    np.testing.assert_allclose(mean, tokens.mean(1).numpy(), rtol=1e-5, atol=1e-5)
    cls = extract_embeddings(model, "block", x, pool="cls")
    np.testing.assert_allclose(cls, tokens[:, 0].numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="3-D: use pool='tokens'"):
        extract_embeddings(model, "block", x)


def test_runs_in_inference_mode_and_leaves_the_model_as_it_was(images):
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((torch.is_inference_mode_enabled(), self.training))
            return x

    model = SmallCNN()
    model.pool = nn.Sequential(model.pool, Probe())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    embeddings = extract_embeddings(model, None, images)
    assert seen and all(inference and not training for inference, training in seen)
    assert model.training  # train mode restored
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm statistics untouched
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    model.eval()
    np.testing.assert_allclose(embeddings, _penultimate(model, images), rtol=1e-5, atol=1e-6)


def test_progress_bar_only_when_asked_or_on_a_terminal(small_model, images, capsys):
    extract_embeddings(small_model, None, images, batch_size=1)  # 10 batches, not a terminal
    assert capsys.readouterr().err == ""
    extract_embeddings(small_model, None, images, batch_size=2, progress=True)
    assert "Embeddings" in capsys.readouterr().err


def test_clear_errors(small_model, images):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        extract_embeddings(small_model, None, images, batch_size=0)
    with pytest.raises(ValueError, match="uint8"):
        extract_embeddings(small_model, None, (images.numpy() * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="images_or_loader is required"):
        extract_embeddings(small_model, None)
    with pytest.raises(ValueError, match="pool must be one of"):
        extract_embeddings(small_model, None, images, pool="mean")
    with pytest.raises(ValueError, match="No layer named 'featurez'"):
        extract_embeddings(small_model, "featurez", images)
    with pytest.raises(ValueError, match="no images: the input is empty"):
        extract_embeddings(small_model, None, images[:0])
    with pytest.raises(ValueError, match="the loader yielded no batches"):
        extract_embeddings(small_model, None, [])
    with pytest.raises(TypeError, match="iterable of batches"):
        extract_embeddings(small_model, None, "images/")
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        extract_embeddings(small_model, None, bad)
    convolutional = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match=r"No nn\.Linear runs"):
        extract_embeddings(convolutional, None, images)
    with pytest.raises(RuntimeError, match="did not run during the forward pass"):
        model = SmallCNN().eval()
        model.unused = nn.Linear(2, 2)
        extract_embeddings(model, "unused", images)


def test_pool_features_rules():
    assert pool_features(torch.ones(2, 5)).shape == (2, 5)
    assert pool_features(torch.ones(2, 3, 4, 5, 6)).shape == (2, 3)
    with pytest.raises(TypeError, match="not a tensor"):
        pool_features((torch.ones(2, 3),))
    with pytest.raises(ValueError, match="must return a \\(B, D\\) tensor"):
        pool_features(torch.ones(2, 3, 4, 4), pool=lambda t: t)
