"""Choosing 𝓛 and 𝒯 on validation similarities."""

import torch

from scans.steering.tuning import best_threshold, best_window, layer_auroc, select_setting


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


def test_selection_caps_the_loss_of_harmful_refusal():
    grid = [
        {"alpha": 4.0, "harmful": 0.90, "benign": 0.50, "balanced_accuracy": 0.700},
        {"alpha": 8.0, "harmful": 0.85, "benign": 0.30, "balanced_accuracy": 0.775},
        {"alpha": 12.0, "harmful": 0.40, "benign": 0.05, "balanced_accuracy": 0.675},
        {"alpha": 16.0, "harmful": 0.70, "benign": 0.05, "balanced_accuracy": 0.825},
    ]
    assert select_setting(grid, 0.92, None) == (grid[3], True)
    assert select_setting(grid, 0.92, 0.10) == (grid[1], True)  # 16 would lose 22 points of harmful refusal
    assert select_setting(grid, 0.92, 0.01) == (grid[3], False)  # nothing within the cap: best balanced accuracy
