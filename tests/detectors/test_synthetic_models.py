"""ShortcutDetector on the synthetic shortcut / clean models, and the seed docs' workflow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from shortcut_detect.detectors.shortcut_detector import ShortcutDetector
from shortcut_detect.embeddings import extract_embeddings

FAST = {name: {"n_permutations": 200} for name in ("probe", "hbac", "geometric")}


@pytest.fixture(scope="module")
def penultimate(shortcut_model, clean_model, test_data):
    """Penultimate (classifier-input) embeddings of both models on the held-out images."""
    return {
        "shortcut": extract_embeddings(shortcut_model, None, test_data.images, batch_size=100),
        "clean": extract_embeddings(clean_model, None, test_data.images, batch_size=100),
    }


@pytest.fixture(scope="module")
def fitted(penultimate, test_data):
    return {
        name: ShortcutDetector(method_params=FAST).fit(embeddings, test_data.groups)
        for name, embeddings in penultimate.items()
    }


# These models are trained on the machine at hand, so the assertions keep wide margins: on
# the reference machine the shortcut model's values are AUC 1.00, separation d 3.7, cluster
# enrichment 0.89 and largest significant |d| 4.6 (thresholds for HIGH: 0.71, 0.8, 0.6,
# 0.8); the clean model's are AUC 0.95, d 0.0, enrichment 0.07, no significant dimension.


def test_shortcut_model_embeddings_are_flagged(fitted, test_data):
    assert test_data.groups.mean() == pytest.approx(0.5, abs=0.1)  # both groups well filled
    detector = fitted["shortcut"]
    results = detector.get_results()
    assert detector.overall_risk == "HIGH"
    assert {name: result["risk"] for name, result in results.items()} == dict.fromkeys(
        ("probe", "statistical", "hbac", "geometric"), "HIGH"
    )
    assert results["probe"]["auc"] > 0.9
    assert results["geometric"]["separation_d"] > 2 * 0.8


def test_clean_model_embeddings_carry_much_less_marker_information(fitted):
    shortcut = fitted["shortcut"].get_results()
    clean = fitted["clean"].get_results()
    # The clean model still sees the bright marker (a linear probe can decode it), but it is
    # no dominant direction or cluster of its embedding, unlike in the model that uses it.
    assert fitted["clean"].overall_risk != "HIGH"
    n_high = sum(result["risk"] == "HIGH" for result in clean.values())
    assert n_high <= 1
    assert shortcut["probe"]["auc"] >= clean["probe"]["auc"]
    assert clean["geometric"]["separation_d"] < 0.5 * shortcut["geometric"]["separation_d"]
    assert clean["geometric"]["risk"] != "HIGH"
    assert clean["hbac"]["max_enrichment"] < 0.5 * shortcut["hbac"]["max_enrichment"]
    assert clean["hbac"]["risk"] != "HIGH"


def test_seed_docs_integration_first_half(shortcut_model, test_data, capsys):
    """The seed docs' "Integration with ShortcutDetector", embeddings from the same model."""
    images, group_labels = test_data.images, test_data.groups
    embeddings = extract_embeddings(shortcut_model, None, images, batch_size=64)

    # First, detect shortcuts with embedding-based methods
    detector = ShortcutDetector(methods=["hbac", "probe", "statistical"])
    detector.fit(embeddings, group_labels)

    # Check if probe accuracy indicates shortcuts
    results = detector.get_results()
    if results["probe"]["accuracy"] > 0.7:
        print("Shortcuts detected! Using GradCAM for visual analysis...")
    assert "Shortcuts detected!" in capsys.readouterr().out
    assert list(results) == ["hbac", "probe", "statistical"]
    assert all(result["success"] for result in results.values())


def test_seed_docs_integration_end_to_end(shortcut_model, test_data, tmp_path):
    """The whole example, including the Grad-CAM group comparison."""
    import matplotlib.pyplot as plt

    from shortcut_detect.gradcam import GradCAMHeatmapGenerator

    model, target_layer = shortcut_model, "features"
    images, group_labels = test_data.images[:160], test_data.groups[:160]
    embeddings = extract_embeddings(model, None, images, batch_size=64)

    detector = ShortcutDetector(methods=["hbac", "probe", "statistical"])
    detector.fit(embeddings, group_labels)
    results = detector.get_results()
    assert results["probe"]["accuracy"] > 0.7

    gradcam = GradCAMHeatmapGenerator(model, target_layer)
    result = gradcam.compare_groups(images, group_labels)
    print(f"Attention overlap: {result.overlap_score:.2f}")
    plt.imsave(tmp_path / "divergence.png", result.divergence_regions, cmap="RdBu")
    assert 0.0 <= result.overlap_score <= 1.0
    assert result.divergence_regions.shape == images.shape[2:]
    assert (tmp_path / "divergence.png").stat().st_size > 0


def test_fit_from_loaders_runs_embedding_and_heatmap_methods(
    shortcut_model, test_data, penultimate
):
    """One report with both kinds of evidence, computed from a DataLoader in one pass."""
    n = 160
    dataset = TensorDataset(
        torch.from_numpy(test_data.images[:n]),
        torch.from_numpy(test_data.labels[:n]),
        torch.from_numpy(test_data.groups[:n]),
        torch.from_numpy(test_data.masks[:n]),
    )
    loader = DataLoader(dataset, batch_size=40, shuffle=False)
    detector = ShortcutDetector(
        methods=["probe", "geometric", "gradcam_mask_overlap", "spray"],
        method_params={"probe": FAST["probe"], "geometric": FAST["geometric"]},
    )
    detector.fit_from_loaders(shortcut_model, loader, target_layer="features")
    results = detector.get_results()
    assert detector.inputs_["embedding_layer"] == "classifier"
    assert detector.inputs_["heatmap_layer"] == "features"
    assert detector.inputs_["task_labels"] and detector.inputs_["masks"]
    for name in ("probe", "geometric", "gradcam_mask_overlap", "spray"):
        assert results[name]["success"], (name, results[name].get("error"))
    direct = ShortcutDetector(methods=["probe"], method_params={"probe": FAST["probe"]})
    direct.fit(penultimate["shortcut"][:n], test_data.labels[:n], group_labels=test_data.groups[:n])
    assert results["probe"]["auc"] == pytest.approx(direct.get_results()["probe"]["auc"], abs=1e-6)
    # the shortcut model looks at the marker where it is present
    assert results["gradcam_mask_overlap"]["risk"] in ("MODERATE", "HIGH")


def test_fit_with_precomputed_heatmaps_matches_the_detector_alone(shortcut_model, test_data):
    from shortcut_detect.detectors.mask_overlap import GradCAMMaskOverlapDetector
    from shortcut_detect.gradcam import GradCAMHeatmapGenerator

    images, masks = test_data.images[:80], test_data.masks[:80]
    heatmaps = GradCAMHeatmapGenerator(shortcut_model, "features").generate_heatmap(images)
    embeddings = extract_embeddings(shortcut_model, None, images)
    detector = ShortcutDetector(
        methods=["probe", "gradcam_mask_overlap"], method_params={"probe": FAST["probe"]}
    )
    detector.fit(embeddings, test_data.groups[:80], heatmaps=heatmaps, masks=masks)
    alone = GradCAMMaskOverlapDetector().fit(heatmaps, masks).get_report()
    combined = detector.get_results()["gradcam_mask_overlap"]
    assert combined["metrics"] == alone["metrics"]
    assert combined["risk"] == alone["risk"]
    # a box shared by all samples is a valid mask too (not one per sample)
    box = ShortcutDetector(methods=["gradcam_mask_overlap"]).fit(
        group_labels=test_data.groups[:80], heatmaps=heatmaps, masks=test_data.marker_box
    )
    assert box.get_results()["gradcam_mask_overlap"]["success"]


def test_fit_from_loaders_rejects_batches_without_groups(shortcut_model, test_data):
    images = torch.from_numpy(test_data.images[:8])
    loader = DataLoader(TensorDataset(images, torch.zeros(8)), batch_size=4)
    with pytest.raises(ValueError, match=r"\(images, labels, groups\).*length 2"):
        ShortcutDetector(methods=["probe"]).fit_from_loaders(shortcut_model, loader)
    dict_batches = [
        {"image": images[:4], "group": np.array([0, 1, 0, 1])},
        {"image": images[4:], "group": np.array([1, 0, 1, 0])},
    ]
    detector = ShortcutDetector(methods=["statistical"])
    detector.fit_from_loaders(shortcut_model, dict_batches)
    assert detector.inputs_["groups"] == {"0": 4, "1": 4}


def test_fit_from_several_loaders_concatenates_them(shortcut_model, test_data, penultimate):
    def loader(start, stop):
        part = slice(start, stop)
        tensors = (test_data.images[part], test_data.labels[part], test_data.groups[part])
        return DataLoader(TensorDataset(*map(torch.from_numpy, tensors)), batch_size=32)

    detector = ShortcutDetector(methods=["statistical"])
    detector.fit_from_loaders(shortcut_model, [loader(0, 100), loader(100, 200)])
    direct = ShortcutDetector(methods=["statistical"]).fit(
        penultimate["shortcut"][:200], test_data.groups[:200]
    )
    assert detector.get_results()["statistical"]["metrics"] == pytest.approx(
        direct.get_results()["statistical"]["metrics"]
    )
