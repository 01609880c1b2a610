"""Embedding maps: determinism, subsampling, the computed sentence, and the figure."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from shortcut_detect.analysis.embedding_map import (
    EmbeddingMap,
    describe_embedding_map,
    embedding_map,
)
from shortcut_detect.viz_embeddings import plot_embedding_map


def _blobs(rng, centres, per_blob, dims=20, spread=0.5):
    points = [rng.normal(centre, spread, size=(per_blob, dims)) for centre in centres]
    return np.concatenate(points).astype(np.float32)


@pytest.fixture(scope="module")
def two_blobs():
    rng = np.random.default_rng(0)
    centres = [np.zeros(20), np.full(20, 3.0)]
    return _blobs(rng, centres, 40), np.repeat([0, 1], 40)


def _knn_purity(coords, labels, k=5):
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    neighbours = np.argsort(distances, axis=1)[:, :k]
    return float((labels[neighbours] == labels[:, None]).mean())


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_map_keeps_separate_clusters_apart_and_is_deterministic(two_blobs, method):
    data, labels = two_blobs
    first = embedding_map(data, method, seed=3, max_iter=300)
    second = embedding_map(data, method, seed=3, max_iter=300)
    assert first.coordinates.shape == (80, 2)
    assert first.method == method
    np.testing.assert_array_equal(first.coordinates, second.coordinates)
    np.testing.assert_array_equal(first.indices, np.arange(80))
    # a map that mixed the two blobs would give about 0.5
    assert _knn_purity(first.coordinates, labels) >= 0.9


def test_pca_map_is_the_first_two_principal_components(two_blobs):
    data, _ = two_blobs
    result = embedding_map(data, "pca")
    centred = data.astype(np.float64) - data.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ components[:2].T
    for axis in range(2):  # principal directions are defined up to sign
        column = result.coordinates[:, axis]
        sign = np.sign(column @ expected[:, axis])
        np.testing.assert_allclose(sign * column, expected[:, axis], atol=1e-3)
    assert "of the variance" in result.note


def test_subsampling_keeps_max_points_says_so_and_is_seeded():
    data = np.random.default_rng(1).normal(size=(500, 8)).astype(np.float32)
    result = embedding_map(data, "pca", max_points=200, seed=5)
    again = embedding_map(data, "pca", max_points=200, seed=5)
    other = embedding_map(data, "pca", max_points=200, seed=6)
    assert len(result) == 200 and result.subsampled and result.n_input == 500
    assert np.all(np.diff(result.indices) > 0) and result.indices.max() < 500
    np.testing.assert_array_equal(result.indices, again.indices)
    assert not np.array_equal(result.indices, other.indices)
    assert "random 200 of the 500 points" in result.note
    # the kept points are mapped exactly as if they had been given alone
    alone = embedding_map(data[result.indices], "pca", seed=5)
    np.testing.assert_allclose(np.abs(alone.coordinates), np.abs(result.coordinates), atol=1e-4)


def test_pca_step_is_applied_for_wide_embeddings_and_noted():
    data = np.random.default_rng(2).normal(size=(80, 64)).astype(np.float32)
    result = embedding_map(data, "tsne", pca_dims=10, max_iter=250)
    assert result.params["pca_dims"] == 10
    assert "10 principal components" in result.note
    assert result.params["perplexity"] == pytest.approx((80 - 1) / 3)
    assert result.coordinates.shape == (80, 2)
    assert "Perplexity lowered" in result.note


def test_table_gives_per_point_columns_for_interactive_plots():
    data = np.random.default_rng(3).normal(size=(50, 4))
    groups = np.arange(50) % 3
    result = embedding_map(data, "pca", max_points=20)
    table = result.table(group=groups)
    np.testing.assert_array_equal(table["group"], groups[result.indices])
    np.testing.assert_array_equal(table["x"], result.coordinates[:, 0])
    with pytest.raises(ValueError, match="one per input point"):
        result.table(group=groups[:7])
    with pytest.raises(ValueError, match="column name 'x' is taken"):
        result.table(x=groups)


@pytest.mark.parametrize(
    ("embeddings", "kwargs", "message"),
    [
        (np.zeros((10,)), {}, "2-D array"),
        (np.zeros((2, 4)), {}, "at least 3 points"),
        (np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 2.0]]), {}, "1 rows with NaN"),
        (np.zeros((10, 3)), {"method": "mds"}, "unknown method 'mds'"),
        (np.zeros((10, 3)), {"max_points": 0}, "max_points must be a positive integer"),
        (np.zeros((10, 3)), {"perplexity": 0}, "perplexity must be positive"),
        (np.zeros((10, 3)), {"max_iter": 100}, "max_iter must be at least 250 for t-SNE"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(embeddings, kwargs, message):
    with pytest.raises(ValueError, match=message):
        embedding_map(embeddings, **kwargs)


@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap-learn installed")
def test_umap_without_the_package_names_it_and_auto_falls_back_to_tsne(two_blobs):
    data, _ = two_blobs
    with pytest.raises(ImportError, match="pip install umap-learn"):
        embedding_map(data, "umap")
    assert embedding_map(data[:40], "auto", max_iter=250).method == "tsne"


# -- the sentence ------------------------------------------------------------------------------


def _classes_and_groups(separated: bool, per_cell: int = 100, seed: int = 0):
    """Two classes far apart; within each, two groups either in two islands or mixed."""
    rng = np.random.default_rng(seed)
    coords, labels, groups = [], [], []
    for label, class_centre in enumerate([(0.0, 0.0), (50.0, 0.0)]):
        for group in (0, 1):
            offset = (0.0, 10.0 * group) if separated else (0.0, 0.0)
            centre = np.add(class_centre, offset)
            coords.append(rng.normal(centre, 1.0, size=(per_cell, 2)))
            labels += [label] * per_cell
            groups += [f"site{group}"] * per_cell
    return np.concatenate(coords), np.array(labels), np.array(groups)


def test_description_says_islands_when_groups_separate_within_classes():
    coords, labels, groups = _classes_and_groups(separated=True)
    description = describe_embedding_map(coords, labels, groups)
    assert description.verdict == "separate"
    assert description.sentence.startswith("Groups form separate islands within each class")
    assert description.neighbour_agreement == 1.0
    # expected agreement under shuffling: (99 same-group others of 199) ~ 0.497
    assert description.expected_agreement == pytest.approx(99 / 199, abs=0.02)
    assert description.separation > 0.95
    assert description.p_value == pytest.approx(1 / 201)
    assert set(description.per_class) == {"0", "1"}


def test_description_says_mixed_when_groups_are_mixed():
    # Under the null the agreement has sd ~ sqrt(.25 / (400 * 10)) * 2 ~ 0.016, so the
    # separation ((obs - .5) / .5) has sd ~ 0.03: far below the 0.15 needed for "partly".
    coords, labels, groups = _classes_and_groups(separated=False)
    description = describe_embedding_map(coords, labels, groups)
    assert description.verdict == "mixed"
    assert description.sentence.startswith("Groups are mixed within each class")
    assert abs(description.separation) < 0.12
    assert "if groups were mixed" in description.sentence


def test_classes_alone_ignore_the_class_split_and_use_the_given_name():
    coords, labels, _ = _classes_and_groups(separated=False)
    description = describe_embedding_map(coords, None, labels, group_name="classes")
    assert description.verdict == "separate"
    assert description.sentence.startswith("Classes form separate islands:")
    assert "within each class" not in description.sentence
    assert "share its class," in description.sentence


def test_description_of_an_embedding_map_takes_values_per_input_point():
    coords, labels, groups = _classes_and_groups(separated=True, per_cell=30)
    result = embedding_map(coords, "pca", max_points=100, seed=0)
    description = describe_embedding_map(result, labels, groups)
    direct = describe_embedding_map(
        result.coordinates, labels[result.indices], groups[result.indices]
    )
    assert description.sentence == direct.sentence
    assert description.verdict == "separate"


def test_missing_groups_are_left_out_and_single_group_classes_are_undetermined():
    coords, labels, groups = _classes_and_groups(separated=True, per_cell=20)
    with_missing = groups.astype(object)
    with_missing[::7] = None
    description = describe_embedding_map(coords, labels, with_missing)
    assert sum(item["n"] for item in description.per_class.values()) == 80 - len(range(0, 80, 7))
    one_group = describe_embedding_map(coords, labels, np.zeros(80))
    assert one_group.verdict == "undetermined"
    assert "cannot be told: no class has two groups" in one_group.sentence
    with pytest.raises(ValueError, match="groups has 3 entries for 80 map points"):
        describe_embedding_map(coords, labels, [0, 1, 2])


# -- the figure --------------------------------------------------------------------------------


def test_plot_has_one_scatter_per_value_with_the_right_counts(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.normal(size=(300, 5))
    groups = np.array(["a", "b", "c"])[rng.integers(0, 3, size=300)].astype(object)
    groups[:10] = None
    result = embedding_map(data, "pca", max_points=200, seed=1)
    shown = groups[result.indices]
    figure = plot_embedding_map(
        result,
        groups,
        name="group",
        description="Groups are mixed.",
        save_path=tmp_path / "map.png",
    )
    axis = figure.axes[0]
    counts = {
        collection.get_label(): len(collection.get_offsets()) for collection in axis.collections
    }
    expected = {
        f"{value} (n={int(np.sum(shown == value))})": int(np.sum(shown == value))
        for value in ("a", "b", "c")
    }
    missing = int(sum(item is None for item in shown))
    if missing:
        expected[f"missing (n={missing})"] = missing
    assert counts == expected
    assert sum(counts.values()) == 200
    assert [text.get_text() for text in axis.get_legend().get_texts()] == list(expected)
    assert "random subset of 300" in axis.get_title()
    assert "Groups are mixed." in axis.get_title()
    assert (tmp_path / "map.png").stat().st_size > 0


def test_plot_uses_a_colour_scale_for_many_numbers_and_display_names():
    data = np.random.default_rng(5).normal(size=(100, 3))
    result = embedding_map(data, "pca")
    confidence = np.linspace(0, 1, 100)
    figure = plot_embedding_map(result, confidence, name="confidence")
    assert len(figure.axes[0].collections) == 1
    assert len(figure.axes) == 2  # the colour bar
    labels = np.arange(100) % 2
    figure = plot_embedding_map(result, labels, names={0: "disk", 1: "cross"})
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["disk (n=50)", "cross (n=50)"]


def test_plot_draws_into_a_given_axis():
    from matplotlib.figure import Figure

    result = embedding_map(np.random.default_rng(6).normal(size=(30, 3)), "pca")
    figure = Figure()
    axes = figure.subplots(1, 2)
    returned = plot_embedding_map(result, np.arange(30) % 2, ax=axes[1])
    assert returned is figure
    assert len(axes[1].collections) == 2 and len(axes[0].collections) == 0
    with pytest.raises(TypeError, match="takes an EmbeddingMap"):
        plot_embedding_map(result.coordinates)
    assert isinstance(result, EmbeddingMap)
