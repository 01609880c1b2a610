"""Finding shortcuts without metadata: candidate regions (and groups) from the heatmaps and
embeddings, each confirmed or rejected by an intervention test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.analysis.batches import heatmaps_from_images
from shortcut_detect.analysis.groups import compare_groups
from shortcut_detect.analysis.maps import (
    area_resize,
    as_heatmap_stack,
    location_words,
    region_location,
)
from shortcut_detect.common import to_jsonable
from shortcut_detect.gradcam import GradCAMHeatmapGenerator
from shortcut_detect.interventions.core import (
    READINGS,
    InterventionResult,
    intervene,
    predict_probabilities,
)
from shortcut_detect.interventions.regions import as_image_batch, content_map

__all__ = [
    "Candidate",
    "CandidateTest",
    "DiscoveryResult",
    "confirm_candidates",
    "discover_candidates",
    "find_shortcuts",
    "pattern_consistency",
    "pattern_separation",
]

HOT_LEVEL = 0.5  # a hot region: where the mean map is at least this share of its peak
MAX_REGION_AREA = 0.25  # larger hot regions are not a localised shortcut; use the ninth
OVERLAP_AREA = 0.1  # a region "overlaps the foreground" of an image from this share of its area
MOSTLY_OBJECT = 0.5  # described as on the object when it overlaps the foreground this often
#: A relied-on region counts as a shortcut when some window of it holds a fixed pattern
#: (images carry the same pixels there or not): pattern separation at least this. Measured
#: on the planted-shortcut scenarios: markers 7.5-38, parts of handwritten digits 1.8-3.3.
FIXED_PATTERN = 5.0
#: ... at one place: the windows separated at least ``FIXED_PATTERN`` single out the same
#: images (pattern consistency at least this). A tag sits at the same place in every image
#: that carries it, so every window on it singles out those images; an object that moves (a
#: uniform nodule) falls into each window in a few images, different ones for each window.
#: Measured: planted markers 1.0 (all scenario markers tried, the synthetic CT's tag), the
#: synthetic CT's moving nodules 0.19-0.63 (regions relied on by four training seeds).
CONSISTENT_PATTERN = 0.8
SAME_IMAGES = 0.8  # two windows single out the same images: Jaccard of their minority sides
STRONG_SHARE = 0.5  # windows separated at least this share of the best one show its pattern
PATTERN_WINDOW = 3 / 32  # window side as a share of the image's shorter side (3 px at 32)
MAX_PATTERN_WINDOWS = 256


@dataclass
class Candidate:
    """A suspected shortcut to test.

    Attributes
    ----------
    source:
        Where it came from: ``"hotspot"``, ``"spray"``, ``"group comparison"``,
        ``"embedding cluster"``.
    region:
        Bool mask ``(H, W)`` at the image resolution.
    description:
        One sentence: why it is suspected.
    score:
        Strength of the suspicion (share of maps peaking there, cluster share, ...).
    carriers:
        Bool ``(N,)`` images thought to carry it, or ``None``: test all images. Hotspots:
        the images whose heatmap peaks there; SpRAy: the cluster's images; group
        comparison: the group attending more there. Removal is measured on them (against
        controls on the same images) and transplant moves the region from them onto the
        others, so a shortcut that only some images carry (a tag in one of several
        places) is not diluted by the images without it.
    object_overlap:
        Share of the images whose foreground (object, strokes or marker: pixels far from the
        image's median colour) covers at least ``OVERLAP_AREA`` of the region; set by
        :func:`confirm_candidates`. A region with a high overlap on centred objects is
        part of the object, and its controls are matched on content accordingly.
    pattern_separation:
        How much the region holds a fixed pattern that images carry or not (see
        :func:`pattern_separation`); set by :func:`confirm_candidates` for regions the
        model relies on. Below ``FIXED_PATTERN`` the region reads as part of the object.
    pattern_consistency:
        Whether that pattern sits at one place (see :func:`pattern_consistency`); set with
        ``pattern_separation``. Below ``CONSISTENT_PATTERN`` the pattern is an object that
        moves from image to image and the region reads as part of the object.
    ninth:
        Hotspots: the ninth of the image (``"top-left"``, ...) whose peaks the region came
        from (its box may reach into the neighbouring ninths); ``None`` otherwise.
    """

    source: str
    region: np.ndarray
    description: str
    score: float
    carriers: np.ndarray | None = None
    object_overlap: float | None = None
    pattern_separation: float | None = None
    pattern_consistency: float | None = None
    ninth: str | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Bounding box ``(x0, y0, x1, y1)`` of the region (upper bounds exclusive)."""
        rows, cols = np.nonzero(self.region)
        return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "source": self.source,
                "box": self.box,
                "area": float(self.region.mean()),
                "description": self.description,
                "score": self.score,
                "n_carriers": None if self.carriers is None else int(self.carriers.sum()),
                "object_overlap": self.object_overlap,
                "pattern_separation": self.pattern_separation,
                "pattern_consistency": self.pattern_consistency,
            }
        )


@dataclass
class CandidateTest:
    """A candidate and its intervention result; ``confirmed`` when it is a shortcut."""

    candidate: Candidate
    result: InterventionResult

    @property
    def object_like(self) -> bool:
        """Relied on, but without a fixed pattern at the same place in its carriers: the
        region reads as part of the object."""
        return self.result.relied_on and (self._varies or self._moves)

    @property
    def _varies(self) -> bool:
        separation = self.candidate.pattern_separation
        return separation is not None and separation < FIXED_PATTERN

    @property
    def _moves(self) -> bool:
        consistency = self.candidate.pattern_consistency
        return consistency is not None and consistency < CONSISTENT_PATTERN

    @property
    def confirmed(self) -> bool:
        """A shortcut: the model relies on the region and the region holds a fixed pattern."""
        return self.result.relied_on and not self.object_like

    @property
    def reading(self) -> str:
        """Sentence like "the model relies on the top-left corner: removing it flips 71% ..."."""
        removal = self.result.removal[self.result.fill]
        where = region_location(self.candidate.region)
        # The foreground note goes inside the parenthesis so the sentence keeps its shape.
        source = self.candidate.source
        overlap = self.candidate.object_overlap
        if overlap is not None and overlap >= MOSTLY_OBJECT:
            source += f"; on the image foreground in {overlap:.0%} of images"
        relies = (
            f"The model relies on the {where} region ({source}): removing it "
            f"flips {removal.flip_rate.text(percent=True)} of predictions, control "
            f"{removal.control_flip_rate.value:.0%}; effect {self.result.effect.text()}"
        )
        if self.object_like:
            if self._varies:
                why = (
                    "Its content varies from image to image as an object's does (pattern "
                    f"separation {self.candidate.pattern_separation:.1f}, below "
                    f"{FIXED_PATTERN:g} for a fixed mark)"
                )
            else:
                why = (
                    "Its pattern does not sit at one place: each part of the region singles "
                    "out other images, as an object that moves does (pattern consistency "
                    f"{self.candidate.pattern_consistency:.2f}, below {CONSISTENT_PATTERN:g} "
                    "for a fixed mark)"
                )
            return (
                f"{relies}. {why}: read as part of the object, not a shortcut; look at the "
                "examples if that part should not matter."
            )
        if self.confirmed:
            return relies + "."
        return (
            f"Not confirmed: the {where} region ({source}) reads "
            f"'{self.result.reading}' (effect {self.result.effect.text()})."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_dict(),
            "confirmed": self.confirmed,
            "object_like": self.object_like,
            "reading": self.reading,
            "result": self.result.to_dict(),
        }


@dataclass
class DiscoveryResult:
    """Candidates tried, their tests, and the confirmed shortcuts."""

    candidates: list[Candidate]
    tests: list[CandidateTest]
    summary: str
    notes: list[str] = field(default_factory=list)

    @property
    def confirmed(self) -> list[CandidateTest]:
        return [test for test in self.tests if test.confirmed]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "n_candidates": len(self.candidates),
                "n_confirmed": len(self.confirmed),
                "tests": [test.to_dict() for test in self.tests],
                "summary": self.summary,
                "notes": self.notes,
            }
        )


def _foreground(images: torch.Tensor) -> np.ndarray:
    """Bool ``(N, *spatial)``: pixels whose content is at least half the image's 99th
    percentile of content (see :func:`~shortcut_detect.interventions.regions.content_map`)."""
    content = content_map(images)
    flat = content.reshape(len(content), -1)
    level = 0.5 * np.percentile(flat, 99, axis=1)
    return (flat > np.maximum(level, 1e-12)[:, None]).reshape(content.shape)


def _object_overlap(region: np.ndarray, foreground: np.ndarray) -> float:
    covered = (foreground & region).reshape(len(foreground), -1).sum(axis=1)
    return float((covered >= OVERLAP_AREA * region.sum()).mean())


def _two_means_split(points: np.ndarray, iterations: int = 20) -> tuple[float, np.ndarray]:
    """Split ``points`` ``(N, D)`` in two by 2-means: the distance between the two means
    over the mean within-cluster RMS distance (0 when no split holds two points each), and
    the split (bool ``(N,)``, one side ``True``).

    Written out (a few vectorised lines) because it runs on hundreds of small windows per
    region, where a general k-means call costs far more than the work.
    """
    no_split = np.zeros(len(points), dtype=bool)
    centred = points - points.mean(axis=0)
    if not centred.any():
        return 0.0, no_split
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    side = centred @ direction > 0
    for _ in range(iterations):
        if side.sum() < 2 or (~side).sum() < 2:
            return 0.0, no_split
        first, second = points[side].mean(axis=0), points[~side].mean(axis=0)
        closer = ((points - first) ** 2).sum(axis=1) < ((points - second) ** 2).sum(axis=1)
        if (closer == side).all():
            break
        side = closer
    if side.sum() < 2 or (~side).sum() < 2:
        return 0.0, no_split
    spreads = [
        np.sqrt(((part - part.mean(axis=0)) ** 2).sum(axis=1).mean())
        for part in (points[side], points[~side])
    ]
    gap = np.linalg.norm(points[side].mean(axis=0) - points[~side].mean(axis=0))
    return float(gap / max(np.mean(spreads), 1e-9)), side


@dataclass
class _WindowSplit:
    """One window of :func:`pattern_separation`: its corner, the 2-means separation of the
    images on its pixels and the split (see :func:`_two_means_split`)."""

    corner: tuple[int, int]
    side: int
    separation: float
    split: np.ndarray


def _window_splits(images: Any, region: np.ndarray) -> list[_WindowSplit]:
    """Every square window (side ``PATTERN_WINDOW`` of the image, at least 3 pixels) inside
    the region's bounding box, split by 2-means."""
    batch = as_image_batch(images).detach().float().cpu().numpy()
    height, width = batch.shape[2:]
    side = max(3, round(PATTERN_WINDOW * min(height, width)))
    rows, cols = np.nonzero(region)
    if not len(rows):
        return []
    top, left = int(rows.min()), int(cols.min())
    bottom = max(top, min(int(rows.max()) + 1, height) - side)
    right = max(left, min(int(cols.max()) + 1, width) - side)
    starts = [(y, x) for y in range(top, bottom + 1) for x in range(left, right + 1)]
    if len(starts) > MAX_PATTERN_WINDOWS:
        chosen = np.linspace(0, len(starts) - 1, MAX_PATTERN_WINDOWS).round().astype(int)
        starts = [starts[i] for i in chosen]
    return [
        _WindowSplit(
            (y, x),
            side,
            *_two_means_split(
                batch[:, :, y : y + side, x : x + side].reshape(len(batch), -1).astype(np.float64)
            ),
        )
        for y, x in starts
    ]


def pattern_separation(images: Any, region: np.ndarray) -> float:
    """How much a region holds a fixed pattern that images either carry or not.

    A localised shortcut (a tag, a marker, a ruler) is the same pixels wherever it is
    present, so the images split cleanly into "with it" and "without it"; a part of the
    object (a stroke, an organ's edge) varies from image to image. For square windows
    (side ``PATTERN_WINDOW`` of the image, at least 3 pixels) inside the region's bounding
    box, the images are split in two by 2-means on the window's pixels, and the separation
    is the distance between the two means over the mean within-cluster spread. Returns the
    largest separation over the windows.

    Parameters
    ----------
    images:
        ``(N, C, H, W)`` inputs (as the model sees them).
    region:
        Bool ``(H, W)`` mask.
    """
    return max((window.separation for window in _window_splits(images, region)), default=0.0)


def pattern_consistency(images: Any, region: np.ndarray) -> float:
    """Whether a region's fixed pattern sits at one place: do its windows single out the
    same images?

    A mark at a fixed place (a tag, a ruler) is the same pixels in every image that carries
    it, so every window on it splits the images the same way: those with the mark and those
    without. An object that moves from image to image (a nodule of uniform intensity) also
    gives well-separated windows when the background is uniform, but each window singles out
    the few images whose object happens to fall into it, and its neighbours other ones.
    Each window of :func:`pattern_separation` singles out the images on the smaller side
    of its split. The strong windows (separated at least ``STRONG_SHARE`` of the best one,
    and at least ``FIXED_PATTERN``) are compared with the separated windows around them
    (at least ``FIXED_PATTERN``, corners within one window side): on a mark's edges as well
    as inside it. The consistency is the largest share of those windows that single out
    the same images as one strong window (Jaccard at least ``SAME_IMAGES``): 1 for a mark,
    lower for a moving object, 0 when no window is separated. Limit: with only one or two
    separated windows it reads 1, whatever moves.

    Parameters
    ----------
    images:
        ``(N, C, H, W)`` inputs (as the model sees them).
    region:
        Bool ``(H, W)`` mask.
    """
    return _consistency(_window_splits(images, region))


def _smaller_side(split: np.ndarray) -> np.ndarray:
    """The smaller side of a split (on a tie, the side without the first image, so that
    the same split always gives the same side)."""
    twice = 2 * int(split.sum())
    if twice < len(split) or (twice == len(split) and not split[0]):
        return split
    return ~split


def _consistency(windows: list[_WindowSplit]) -> float:
    strongest = max((window.separation for window in windows), default=0.0)
    if strongest < FIXED_PATTERN:
        return 0.0
    # The windows that make the region's separation (at least half the best one's), and
    # the separated windows around them: on a mark's edges as well as inside it.
    strong = [w for w in windows if w.separation >= STRONG_SHARE * strongest]
    around = [
        w
        for w in windows
        if w.separation >= FIXED_PATTERN
        and any(
            max(abs(w.corner[0] - s.corner[0]), abs(w.corner[1] - s.corner[1])) <= s.side
            for s in strong
        )
    ]
    strong_sides = np.array([_smaller_side(w.split) for w in strong], dtype=np.float64)
    around_sides = np.array([_smaller_side(w.split) for w in around], dtype=np.float64)
    shared = strong_sides @ around_sides.T
    sizes = strong_sides.sum(axis=1)[:, None] + around_sides.sum(axis=1)[None, :]
    jaccard = shared / np.maximum(sizes - shared, 1.0)
    return float((jaccard >= SAME_IMAGES).mean(axis=1).max())


def _ninth_box(index: int, shape: tuple[int, int]) -> np.ndarray:
    row, col = divmod(index, 3)
    mask = np.zeros(shape, dtype=bool)
    h, w = shape
    mask[row * h // 3 : (row + 1) * h // 3, col * w // 3 : (col + 1) * w // 3] = True
    return mask


def _hot_region(mean_map: np.ndarray, within: np.ndarray | None = None) -> np.ndarray | None:
    """Bounding box (as a mask) of the connected hot area around the map's peak."""
    from scipy import ndimage

    search = mean_map if within is None else np.where(within, mean_map, -np.inf)
    peak = np.unravel_index(int(np.argmax(search)), mean_map.shape)
    if mean_map[peak] <= 0:
        return None
    labelled, _ = ndimage.label(mean_map >= HOT_LEVEL * mean_map[peak])
    component = labelled == labelled[peak]
    rows, cols = np.nonzero(component)
    box = np.zeros(mean_map.shape, dtype=bool)
    box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    if box.mean() > MAX_REGION_AREA:
        return None
    return box


def _overlaps(region: np.ndarray, others: Sequence[Candidate], limit: float = 0.5) -> bool:
    """The region mostly lies inside (or holds) one already kept."""
    for other in others:
        smaller = min(region.sum(), other.region.sum())
        if smaller and (region & other.region).sum() / smaller > limit:
            return True
    return False


def _hotspots(maps: np.ndarray, min_share: float) -> list[Candidate]:
    n_samples, shape = len(maps), maps.shape[1:]
    flat = maps.reshape(n_samples, -1).argmax(axis=1)
    rows, cols = np.unravel_index(flat, shape)
    ninth = (3 * rows // shape[0]) * 3 + 3 * cols // shape[1]
    shares = np.bincount(ninth, minlength=9) / n_samples
    found = []
    for index in np.argsort(-shares):
        if index == 4 or shares[index] < min_share:  # the centre ninth is where objects are
            continue
        members = ninth == index
        cell = _ninth_box(int(index), shape)
        region = _hot_region(maps[members].mean(axis=0), within=cell)
        region = cell if region is None else region
        where = location_words(divmod(int(index), 3), (3, 3))
        found.append(
            Candidate(
                "hotspot",
                region,
                f"{shares[index]:.0%} of heatmaps peak in the {where} ninth of the image",
                float(shares[index]),
                carriers=members,
                ninth=where,
            )
        )
    return found


def _spray(maps: np.ndarray, seed: int) -> list[Candidate]:
    from shortcut_detect.detectors.spray import SpRAyDetector  # sklearn on first use

    if len(maps) < 8:
        return []
    detector = SpRAyDetector(random_state=seed).fit(maps)
    found = []
    for cluster in detector.get_report()["details"]["clusters"]:
        if not cluster["flagged"]:
            continue
        mean_map = detector.cluster_mean_maps_[cluster["cluster"]]
        if mean_map.shape != maps.shape[1:]:
            mean_map = area_resize(mean_map[None], maps.shape[1:])[0]
        region = _hot_region(mean_map)
        if region is None:
            continue
        found.append(
            Candidate(
                "spray",
                region,
                f"SpRAy cluster {cluster['cluster']} ({cluster['share']:.0%} of images) "
                f"concentrates its attention on {cluster['concentration_area']:.1%} of the "
                f"image ({cluster['peak_location']})",
                float(cluster["share"]),
                carriers=detector.labels_ == cluster["cluster"],
            )
        )
    return found


def _from_group_comparison(
    comparison: Any, codes: np.ndarray, names: list[Any], shape: tuple[int, int]
) -> list[Candidate]:
    metrics, details = comparison.metrics, comparison.details
    if not metrics.get("significant") or len(names) != 2:
        return []
    significance = np.asarray(details["significance_map"], dtype=bool)
    divergence = np.asarray(comparison.divergence_regions)
    found = []
    for sign, group in ((1, 1), (-1, 0)):
        part = significance & (np.sign(divergence) == sign)
        if not part.any():
            continue
        mean_map = np.where(part, np.abs(divergence), 0.0)
        if mean_map.shape != shape:
            mean_map = area_resize(mean_map[None], shape)[0]
        region = _hot_region(mean_map)
        if region is None:
            continue
        found.append(
            Candidate(
                "group comparison",
                region,
                f"group {names[group]!s} attends significantly more to the "
                f"{region_location(region)} (permutation p = {metrics['p_value']:.3g})",
                float(abs(divergence[part]).max()),
                carriers=codes == group,
            )
        )
    return found


def _embedding_groups(
    embeddings: Any, predictions: Any, labels: Any, seed: int, max_clusters: int = 6
) -> list[np.ndarray]:
    """Clusters of the embeddings that are pure in prediction but mixed in label."""
    from sklearn.cluster import KMeans

    features = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    predicted, truth = np.asarray(predictions), np.asarray(labels)
    groups = []
    for k in range(2, max_clusters + 1):
        assignment = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(features)
        for cluster in range(k):
            members = assignment == cluster
            if members.sum() < max(4, 0.05 * len(members)):
                continue
            _, pred_counts = np.unique(predicted[members], return_counts=True)
            _, label_counts = np.unique(truth[members], return_counts=True)
            if (
                pred_counts.max() / members.sum() >= 0.9
                and label_counts.max() / members.sum() <= 0.75
            ):
                groups.append(members)
    return groups


def discover_candidates(
    heatmaps: Any,
    *,
    image_size: Sequence[int] | None = None,
    groups: Any = None,
    embeddings: Any = None,
    predictions: Any = None,
    labels: Any = None,
    group_comparison: Any = None,
    min_hotspot_share: float = 2 / 9,
    use_spray: bool = True,
    max_candidates: int = 6,
    n_permutations: int = 500,
    seed: int = 0,
) -> list[Candidate]:
    """Suspected shortcut regions read off the heatmaps (and groups or embeddings if given).

    Parameters
    ----------
    heatmaps:
        Non-negative ``(N, H, W)`` maps (2-D images only).
    image_size:
        ``(H', W')`` of the images, when the maps are at another resolution; regions are
        returned at this size.
    groups:
        Known group per image (2 groups): the significant region of the group comparison
        becomes a candidate, with the group attending more there as carriers.
    embeddings, predictions, labels:
        When no groups are given: clusters of the embeddings that are pure in prediction
        (>= 90%) but mixed in label (<= 75%) are compared with the rest as candidate groups.
    group_comparison:
        An already computed :func:`~shortcut_detect.analysis.groups.compare_groups` result
        for ``groups`` (saves recomputing it).
    min_hotspot_share:
        A ninth of the image (not the centre) where at least this share of maps peak is a
        candidate (2/9 = twice the share of evenly spread peaks).
    use_spray:
        Add the hot regions of SpRAy clusters that concentrate their attention.
    max_candidates:
        Keep at most this many (highest score first; near-duplicates dropped).
    """
    maps = as_heatmap_stack(heatmaps, keep_float32=True)
    if maps.ndim != 3:
        raise ValueError(f"discovery works on 2-D heatmaps (N, H, W); got shape {maps.shape}")
    shape = tuple(int(s) for s in (image_size or maps.shape[1:]))
    if len(shape) != 2:
        raise ValueError(f"image_size must be (H, W), got {image_size}")
    if shape != maps.shape[1:]:
        maps = area_resize(maps, shape)
    n_samples = len(maps)
    found = _hotspots(maps, float(min_hotspot_share))
    if use_spray:
        found += _spray(maps, seed)
    group_sets: list[tuple[np.ndarray, list[Any]]] = []
    if groups is not None:
        names, codes = np.unique(np.asarray(groups), return_inverse=True)
        if len(names) == 2:
            group_sets.append((codes, list(names)))
    elif embeddings is not None and predictions is not None and labels is not None:
        for members in _embedding_groups(embeddings, predictions, labels, seed):
            group_sets.append((members.astype(np.int64), ["rest", "embedding cluster"]))
    for index, (codes, names) in enumerate(group_sets):
        comparison = group_comparison if (index == 0 and groups is not None) else None
        if comparison is None:
            comparison = compare_groups(maps, codes, n_permutations=n_permutations, seed=seed)
        for candidate in _from_group_comparison(comparison, codes, names, shape):
            if groups is None:
                candidate.source = "embedding cluster"
            found.append(candidate)
    found.sort(key=lambda c: -c.score)
    kept: list[Candidate] = []
    for candidate in found:
        if not _overlaps(candidate.region, kept):
            kept.append(candidate)
    if n_samples and len(kept) > max_candidates:
        kept = kept[:max_candidates]
    return kept


def _score_pattern(images: Any, candidate: Candidate) -> None:
    """Set the candidate's pattern separation and consistency (one pass over the windows)."""
    windows = _window_splits(images, candidate.region)
    candidate.pattern_separation = max((window.separation for window in windows), default=0.0)
    candidate.pattern_consistency = _consistency(windows)


def confirm_candidates(
    model: nn.Module,
    images: Any,
    candidates: Sequence[Candidate],
    *,
    heatmaps: Any = None,
    alpha: float = 0.05,
    **intervene_options: Any,
) -> list[CandidateTest]:
    """Run :func:`~shortcut_detect.interventions.intervene` on every candidate.

    Controls avoid all candidate regions. The significance level is Bonferroni-corrected
    over the candidates (``alpha / len(candidates)``), so trying more candidates does not
    raise the false-alarm rate. A region the model relies on is confirmed as a shortcut only
    if it holds a fixed pattern (:func:`pattern_separation` at least ``FIXED_PATTERN``) at
    one place (:func:`pattern_consistency` at least ``CONSISTENT_PATTERN``); otherwise the
    test reads "part of the object" (:attr:`CandidateTest.object_like`).
    Extra keyword arguments go to ``intervene``.
    """
    if not candidates:
        return []
    union = np.zeros_like(candidates[0].region)
    for candidate in candidates:
        union |= candidate.region
    corrected = alpha / len(candidates)
    foreground = _foreground(as_image_batch(images))
    tests = []
    for candidate in candidates:
        if candidate.object_overlap is None and candidate.region.shape == foreground.shape[1:]:
            candidate.object_overlap = _object_overlap(candidate.region, foreground)
        others = union & ~candidate.region
        result = None
        # Controls keep clear of the other candidates; when those leave no room (a large
        # region with candidates in every corner), they may overlap them.
        for avoid in (others, None) if others.any() else (None,):
            result = intervene(
                model,
                images,
                candidate.region,
                carriers=candidate.carriers,
                heatmaps=heatmaps,
                avoid=avoid,
                alpha=corrected,
                **intervene_options,
            )
            if result.effect.n > 0:
                break
        if result.relied_on and candidate.pattern_separation is None:
            _score_pattern(images, candidate)
        tests.append(CandidateTest(candidate, result))
    return tests


def find_shortcuts(
    model: nn.Module,
    images: Any,
    *,
    heatmaps: Any = None,
    generator: Any = None,
    groups: Any = None,
    embeddings: Any = None,
    labels: Any = None,
    discovery_options: dict[str, Any] | None = None,
    **intervene_options: Any,
) -> DiscoveryResult:
    """Look for shortcuts with no masks (and maybe no groups), and test every candidate.

    Parameters
    ----------
    model, images:
        The classifier and its preprocessed inputs ``(N, C, H, W)``.
    heatmaps, generator:
        Heatmaps ``(N, H, W)``, or a generator to compute them (default: Grad-CAM on the
        last spatial layer).
    groups, embeddings, labels:
        Optional metadata for :func:`discover_candidates` (predictions are computed).
    discovery_options:
        Extra arguments of :func:`discover_candidates`.
    intervene_options:
        Passed to :func:`~shortcut_detect.interventions.intervene` for every candidate.
    """
    batch = as_image_batch(images)
    if batch.ndim != 4:
        raise ValueError(
            "find_shortcuts works on 2-D images (N, C, H, W); use intervene for volumes"
        )
    if heatmaps is None:
        generator = generator or GradCAMHeatmapGenerator(model)
        heatmaps = heatmaps_from_images(generator, batch)
    predictions = None
    if embeddings is not None and labels is not None:
        predictions = predict_probabilities(model, batch).argmax(axis=1)
    candidates = discover_candidates(
        heatmaps,
        image_size=batch.shape[2:],
        groups=groups,
        embeddings=embeddings,
        predictions=predictions,
        labels=labels,
        **(discovery_options or {}),
    )
    tests = confirm_candidates(model, batch, candidates, heatmaps=heatmaps, **intervene_options)
    confirmed = [test for test in tests if test.confirmed]
    if not candidates:
        summary = "No candidate shortcut: no off-centre attention hotspot or concentrated cluster."
    elif not confirmed:
        summary = f"Tried {len(candidates)} candidate region(s); none is a shortcut: " + "; ".join(
            f"{t.candidate.description} -> "
            + ("part of the object" if t.object_like else t.result.reading)
            for t in tests
        )
        summary += "."
    else:
        summary = " ".join(test.reading for test in confirmed)
    notes = [f"{READINGS[0]!r} needs a significant effect after Bonferroni correction"]
    return DiscoveryResult(candidates, tests, summary, notes)
