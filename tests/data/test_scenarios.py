"""Training of the planted-shortcut scenarios' models."""

from __future__ import annotations

import numpy as np
import torch

from shortcut_detect.data import scenarios
from shortcut_detect.data.synthetic import evaluate_accuracy


def _easy_task(count: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = (np.arange(count) % 2).astype(np.int64)
    images = rng.normal(0.3, 0.05, size=(count, 1, 32, 32)).astype(np.float32)
    images[labels == 1, :, 8:24, 8:24] += 0.6  # class 1: a bright square in the middle
    return images, labels


def test_a_collapsed_training_run_is_restarted_and_a_good_one_kept(monkeypatch):
    images, labels = _easy_task()
    real_train = scenarios.train_classifier
    seeds = []

    def first_run_collapses(model, images, labels, *, seed, **options):
        seeds.append(seed)
        if len(seeds) == 1:  # learns nothing: always class 1
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.zero_()
                model.classifier.bias.copy_(torch.tensor([0.0, 1.0]))
            return model.eval()
        return real_train(model, images, labels, seed=seed, **options)

    monkeypatch.setattr(scenarios, "train_classifier", first_run_collapses)
    model = scenarios._train_scenario_model(1, images, labels, epochs=5, lr=3e-3, seed=7)
    assert seeds == [7, 7 + 1_000_000]
    assert evaluate_accuracy(model, images, labels) >= 0.5 + scenarios.LEARNED_MARGIN

    seeds.clear()
    monkeypatch.setattr(
        scenarios,
        "train_classifier",
        lambda *args, seed, **options: (
            seeds.append(seed),
            real_train(*args, seed=seed, **options),
        )[1],
    )
    scenarios._train_scenario_model(1, images, labels, epochs=5, lr=3e-3, seed=7)
    assert seeds == [7]  # a run that learned is kept: the first attempt is the seed itself
