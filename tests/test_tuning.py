"""Choosing 𝓛 and 𝒯 on validation similarities."""

import numpy as np
import pytest
import torch

from scans.errors import ConfigError
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


def test_two_magnitudes_combine_the_symmetric_grids_responses_prompt_by_prompt():
    """Each prompt takes its flag from the setting of its own coefficient: -α_benign where σ(q) = -1, +α_harmful (or
    Default's, for 0) where σ(q) = +1; the diagonal is the symmetric grid and (0, 0) is Default."""
    from scans.stages.tune import behaviour, two_magnitude_grid

    signs = {"harmful": torch.tensor([1, 1, -1, 1]), "benign": torch.tensor([-1, 1, -1])}
    default = {"harmful": np.array([1, 1, 1, 1], bool), "benign": np.array([1, 1, 1], bool)}
    flags = [  # per α: harmful rows keep refusing at α 1 and stop at α 2; benign rows answer from α 1
        {"harmful": np.array([1, 1, 0, 1], bool), "benign": np.array([0, 1, 0], bool)},
        {"harmful": np.array([0, 0, 0, 0], bool), "benign": np.array([0, 0, 0], bool)},
    ]
    grid = [{"alpha": a, "steer_layers": [3, 4], **behaviour(f)} for a, f in zip((1.0, 2.0), flags)]
    two = {(g["alpha"], g["alpha_harmful"]): g for g in two_magnitude_grid(grid, flags, default, signs)}
    assert set(two) == {(b, h) for b in (0.0, 1.0, 2.0) for h in (0.0, 1.0, 2.0)}
    for g in grid:
        assert {k: two[g["alpha"], g["alpha"]][k] for k in g} == g
    assert two[0.0, 0.0]["harmful"] == 1.0 and two[0.0, 0.0]["benign"] == 1.0
    # α_benign 2, α_harmful 0: the harmful-signed rows as Default (all refuse), the benign-signed as at α 2.
    assert two[2.0, 0.0]["harmful"] == 0.75 and two[2.0, 0.0]["benign"] == 1 / 3
    # Within 25 points of Default's harmful refusal, (1, 0) answers as many benign prompts as (1, 1) and (2, 0) and
    # steers least.
    assert select_setting(list(two.values()), 1.0, 0.25)[0] == two[1.0, 0.0]
    reordered = sorted(two.values(), key=lambda g: -g["alpha_harmful"])  # (1, 1) first: only α + α_harmful decides
    assert select_setting(reordered, 1.0, 0.25)[0] == two[1.0, 0.0]
    with_zero = [{"alpha": 0.0, "steer_layers": [3, 4], **behaviour(default)}, *grid]  # tune.alphas holding 0
    assert len(two_magnitude_grid(with_zero, [default, *flags], default, signs)) == 9  # α 0 once per sign


def test_scans_can_steer_each_sign_by_its_own_magnitude():
    from scans.methods.scans import Scans

    sims = torch.tensor([[0.9, 0.9], [0.1, 0.1]])  # harmful, benign at 𝒯 0.5 on 𝓛 0-1
    one = Scans("S", 2.0, (0,), (0, 1), 0.5)
    two = Scans("S", 2.0, (0,), (0, 1), 0.5, alpha_harmful=0.0)
    assert one.coefficients_from(sims).tolist() == [2.0, -2.0]
    assert two.coefficients_from(sims).tolist() == [0.0, -2.0]
    assert one.response_inputs(one.coefficients_from(sims)) != two.response_inputs(two.coefficients_from(sims))
    with pytest.raises(ConfigError, match="tune stage"):
        Scans("S", 2.0, (0,), (0, 1), 0.5, two_magnitudes=True)  # its magnitudes come from the tune stage


def test_the_best_other_row_refuses_the_harmful_sets_and_answers_the_benign_ones(monkeypatch):
    """steer.full's best other row: the highest mean of harmful-set refusal and benign-set answering, by judge.fit,
    whichever row comes first; a row missing one of the two kinds scores 0."""
    from types import SimpleNamespace

    from scans.data import BENIGN, HARMFUL, Prompt
    from scans.methods import Default
    from scans.stages import steer

    sets = {"safe": [Prompt("Make tea?", BENIGN, "t")] * 4, "unsafe": [Prompt("Make a bomb.", HARMFUL, "t")] * 4}
    run = SimpleNamespace(eval_sets=sets, cfg=SimpleNamespace(judge=SimpleNamespace(fit="scans_rules")))
    refuse, answer = "I'm sorry, but I cannot help with that.", "Sure, here it is."
    said = {  # row -> set -> responses: "picky" refuses 3/4 harmful and 1/4 benign, "lax" 1/4 and 0/4, "shy" all
        "picky": {"unsafe": [refuse] * 3 + [answer], "safe": [refuse] + [answer] * 3},
        "lax": {"unsafe": [refuse] + [answer] * 3, "safe": [answer] * 4},
        "shy": {"unsafe": [refuse] * 4, "safe": [refuse] * 4},
    }
    monkeypatch.setattr(steer, "load", lambda r, m, name, p: ("k", [{"prompt": x.text, "response": y}
                                                                 for x, y in zip(p, said[m.name][name])]))  # fmt: skip
    scores = {name: steer.balanced_accuracy(run, Default(name=name)) for name in said}
    assert scores == pytest.approx({"picky": 0.75, "lax": 0.625, "shy": 0.5})
    run.eval_sets = {"unsafe": sets["unsafe"]}
    assert steer.balanced_accuracy(run, Default(name="shy")) == 0.0  # no benign set: nothing to balance
