"""Loading models from specs: demo, torchvision, timm, user factories, files; clear errors."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision

from shortcut_detect.audit.pipeline import AuditOptions
from shortcut_detect.common.device import DeviceUnavailableError
from shortcut_detect.models import (
    ModelLoadError,
    ModelOptions,
    UnknownClassError,
    UnknownInputSizeError,
    build_model,
    class_index,
    load_model,
)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """A torchvision resnet18 with 3 classes and random weights, saved as a state dict."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_demo_specs_give_the_demo_models(shortcut_model, clean_model):
    loaded = load_model("demo")
    assert loaded.class_names == ["disk", "cross"]
    assert loaded.default_layer == "features"
    assert loaded.input_size == (48, 48) and loaded.in_channels == 3
    assert loaded.transform.mean is None  # the demo models take pixels in [0, 1]
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), shortcut_model(x))
        assert torch.equal(load_model("demo:clean").model(x), clean_model(x))


def test_torchvision_state_dict_file_loads_the_exact_weights(resnet_file):
    original, path = resnet_file
    loaded = load_model("torchvision:resnet18", weights=path, resize=[64])
    assert loaded.num_classes == 3  # read from the weights file
    assert loaded.default_layer == "layer4"
    assert loaded.input_size == (64, 64)
    assert loaded.transform.mean == pytest.approx((0.485, 0.456, 0.406))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), original(x))
    full = load_model("torchvision:resnet18", weights=path)
    assert full.input_size == (224, 224) and full.transform.crop  # the architecture's recipe
    assert any("assumed" in note for note in full.notes)


def test_safetensors_and_class_names(resnet_file, tmp_path):
    from safetensors.torch import save_file

    original, _ = resnet_file
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(path))
    names = tmp_path / "classes.txt"
    names.write_text("normal\npneumonia\ncovid\n")
    loaded = load_model("torchvision:resnet18", weights=path, classes=names, resize=[64])
    assert loaded.class_names == ["normal", "pneumonia", "covid"] and loaded.class_names_known
    names.write_text("a\nb\n")
    with pytest.raises(ModelLoadError, match="has 3 classes but 2 were given"):
        load_model("torchvision:resnet18", weights=path, classes=names, resize=[64])


def test_weights_that_do_not_fit_say_so(resnet_file):
    _, path = resnet_file
    with pytest.raises(ModelLoadError, match=r"do not fit the model: size mismatch.*num_classes="):
        load_model("torchvision:resnet50", weights=path, resize=[64])


def test_unknown_spec_lists_the_accepted_forms():
    with pytest.raises(ModelLoadError, match="Unknown model spec 'resnet-please'") as info:
        load_model("resnet-please")
    text = str(info.value)
    for form in ("demo", "torchvision:NAME", "timm:NAME", "package.module:factory", "TorchScript"):
        assert form in text
    with pytest.raises(ModelLoadError, match="no model 'resnet5000'"):
        load_model("torchvision:resnet5000")


def test_pickled_model_needs_trust(tmp_path):
    model = torchvision.models.resnet18(num_classes=2).eval()
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError, match="trust_pickle=True"):
        load_model(str(path), resize=[64])
    loaded = load_model(str(path), trust_pickle=True, preset="imagenet")
    assert loaded.num_classes == 2 and loaded.default_layer == "layer4"
    with pytest.raises(ModelLoadError, match="trust_pickle=True"):
        load_model("torchvision:resnet18", weights=path, resize=[64])


def test_torchscript_loads_for_predictions_and_explains_why_no_cam(tmp_path):
    import warnings

    from shortcut_detect.audit.pipeline import AuditError, AuditOptions, run_audit

    model = torchvision.models.resnet18(num_classes=2).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(model, torch.rand(1, 3, 64, 64))
        torch.jit.save(scripted, tmp_path / "m.ts")
    loaded = load_model(str(tmp_path / "m.ts"), resize=[64], preset="imagenet")
    assert loaded.is_torchscript and loaded.num_classes == 2
    (tmp_path / "data" / "a").mkdir(parents=True)
    options = AuditOptions(
        model=str(tmp_path / "m.ts"), data=str(tmp_path / "data"), out=str(tmp_path / "o")
    )
    with pytest.raises(AuditError, match="TorchScript"):
        run_audit(options, loaded=loaded)


def test_user_factory_with_weights(tmp_path, monkeypatch, shortcut_model):
    # a package of the same name imported by another test must not shadow this one
    for name in [n for n in sys.modules if n == "mypkg" or n.startswith("mypkg.")]:
        monkeypatch.delitem(sys.modules, name)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text(
        textwrap.dedent(
            """
            from shortcut_detect.data.synthetic import SmallCNN

            def build(num_classes=2):
                return SmallCNN(num_classes=num_classes)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "w.pt"
    torch.save(shortcut_model.state_dict(), weights)
    loaded = load_model("mypkg.nets:build", weights=weights, preset="none", resize=[48])
    assert loaded.default_layer == "features"
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), shortcut_model(x))
    with pytest.raises(UnknownInputSizeError, match="input size and normalisation are not known"):
        load_model("mypkg.nets:build", weights=weights)
    with pytest.raises(ModelLoadError, match="no callable 'nothing'"):
        load_model("mypkg.nets:nothing")


def test_timm_model_from_a_local_file(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
    path = tmp_path / "t.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model("timm:resnet18", weights=path, resize=[64])
    assert loaded.num_classes == 4
    assert loaded.default_layer is not None
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x))


def test_default_weights_without_internet_say_it_needs_the_internet(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelLoadError, match="needs the internet") as info:
        load_model("torchvision:resnet18", weights="DEFAULT")
    assert "weights=FILE" in str(info.value)


def _user_module(tmp_path, monkeypatch, source):
    (tmp_path / "usernets.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usernets", None)


def test_factory_without_num_classes_is_checked_against_the_class_list(
    tmp_path, monkeypatch, shortcut_model
):
    _user_module(
        tmp_path,
        monkeypatch,
        """
        from shortcut_detect.data.synthetic import SmallCNN

        def net():
            return SmallCNN(num_classes=2)
        """,
    )
    torch.save(shortcut_model.state_dict(), tmp_path / "w.pt")
    loaded = load_model(
        "usernets:net", weights=tmp_path / "w.pt", classes=["disk", "cross"], resize=[48],
        preset="none",
    )  # fmt: skip
    assert loaded.class_names == ["disk", "cross"] and loaded.num_classes == 2
    with pytest.raises(ModelLoadError, match=r"classes= lists 3 names but the model has 2 output"):
        load_model("usernets:net", classes=["a", "b", "c"], resize=[48], preset="none")
    with pytest.raises(ModelLoadError, match=r"num_classes= is 5 but the model has 2 outputs"):
        load_model("usernets:net", num_classes=5, resize=[48], preset="none")


def test_user_module_import_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(
        ModelLoadError,
        match=r"no module 'nowhere_pkg.nets' on the Python path\. Run from the folder.*PYTHONPATH",
    ):
        load_model("nowhere_pkg.nets:build")
    _user_module(tmp_path, monkeypatch, "import a_dependency_that_is_missing\n")
    with pytest.raises(ModelLoadError, match=r"importing 'usernets' failed: No module named"):
        load_model("usernets:build")


def test_native_size_model_probes_with_the_given_image_size(tmp_path, monkeypatch):
    _user_module(
        tmp_path,
        monkeypatch,
        """
        from shortcut_detect.data.synthetic import SmallCNN

        def net(num_classes=2):
            return SmallCNN(num_classes=num_classes)
        """,
    )
    loaded = load_model("usernets:net", mean=[0, 0, 0], std=[1, 1, 1], image_size=(40, 56))
    assert loaded.transform.native and loaded.input_size == (40, 56)
    with pytest.raises(UnknownInputSizeError, match="fed at their own size"):
        load_model("usernets:net", mean=[0, 0, 0], std=[1, 1, 1])
    # Only the module: no preprocessing needed.
    assert isinstance(build_model("usernets:net"), torch.nn.Module)


def test_an_unavailable_device_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        load_model("demo", device="cuda")
    assert load_model("demo").device == torch.device("cpu")


def test_class_index_by_name_index_or_predicted():
    names = ("disk", "cross")
    assert class_index(None, names) is None and class_index("predicted", names) is None
    assert class_index("cross", names) == 1 and class_index("0", names) == 0
    assert class_index(np.int64(1), names) == 1
    with pytest.raises(UnknownClassError, match=r"'horse': not a class name or index.*disk"):
        class_index("horse", names)
    with pytest.raises(UnknownClassError, match=r"out of range 0..1"):
        class_index(2, names)


def test_model_options_come_from_the_command_line_once():
    import argparse

    args = argparse.Namespace(
        model="demo", weights=None, num_classes=None, classes=None, trust_pickle=False,
        device=None, preset="none", resize=[48], crop=None, mean=None, std=None, data="d",
    )  # fmt: skip
    options = ModelOptions.from_args(args)
    assert options.spec == "demo" and options.load_kwargs()["resize"] == [48]
    audit = AuditOptions(model="demo", data="d", out="o", **options.load_kwargs())
    assert audit.model_options() == options and audit.load_kwargs() == options.load_kwargs()
    assert options.load().input_size == (48, 48)


def test_library_messages_name_parameters_and_the_cli_names_flags(tmp_path):
    from shortcut_detect.cli import as_flags

    with pytest.raises(ModelLoadError, match="weights=") as error:
        load_model("torchvision:resnet18", weights=str(tmp_path / "missing.pt"))
    assert "--" not in str(error.value)
    assert as_flags(str(error.value)) == f"--weights {tmp_path / 'missing.pt'}: no such file"
    assert as_flags('pass trust_pickle=True; or preset="imagenet", num_classes=.') == (
        "pass --trust-pickle; or --preset imagenet, --num-classes."
    )
