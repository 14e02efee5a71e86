"""Choosing 𝓛 and 𝒯 on validation similarities."""

import torch

from scans.steering.tuning import best_threshold, best_window, layer_auroc


def test_best_window_finds_the_separating_layers():
    g = torch.Generator().manual_seed(0)
    sims = torch.rand(40, 6, generator=g)
    harmful = [i < 20 for i in range(40)]
    sims[:20, 2:4] += 1.0  # only layers 2-3 separate the classes
    auc = layer_auroc(sims, harmful)
    assert auc[2] == auc[3] == 1.0 and auc[0] < 0.9
    layers, best = best_window(sims, harmful, sizes=[1, 2, 4])
    assert layers == [2] and best == 1.0  # the earliest, shortest perfect window


def test_best_threshold_maximises_balanced_accuracy():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    harmful = [False, False, False, True, True, True]
    t, bacc = best_threshold(scores, harmful)
    assert 0.3 < t < 0.7 and bacc == 1.0
