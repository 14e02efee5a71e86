"""Nested leave-one-model-out agreement of the learned refusal judge (`scans.judge.learned`) with XSTest's humans.

    SCANS_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python scripts/judge_nested_cv.py [--quick] [--by-prompt]

Why: a leave-one-model-out score of settings picked by that same score has seen every held-out model while the
hyperparameters were picked, so it is optimistic. Nested means the choice is redone inside each outer fold, blind to
the model it is scored on:

* outer fold: hold out one of the five models;
* inner folds: on the other four only, hold out each in turn and train on the remaining three; a setting's inner
  score is its mean agreement over these four;
* the grid's best inner score picks the settings (ties go to the earlier setting, `SETTINGS` first), which are fitted
  on all four models and scored on the held-out one.

The mean over the five held-out models estimates the agreement of the whole recipe (grid search included) on a model
it has never seen. The grid is `SETTINGS` and its neighbours in C, matcher_weight and opening_chars (`--quick`: two
settings, a smoke check). The plain leave-one-model-out score of `SETTINGS` (`cross_validate`) is printed beside it.

`--by-prompt`: the judge is applied to answers to new prompts of new models, so both levels also hold out prompts,
by `cross_validate(..., by_prompt=True)`'s rule (the training prompts' groups, near duplicates together, dealt into
`folds` = 5 prompt folds):

* inner: on the four outer-training models, inner model i's completions in prompt fold k are judged by a fit on the
  other three models' completions outside fold k; a setting's inner score is the mean over the four inner models of
  its agreement on each (all five folds pooled);
* outer: the held-out model's completions in fold k are judged by the chosen settings fitted on the four training
  models' completions outside fold k.

Its grid is smaller, `SETTINGS` first, then C in {16, 64} x matcher_weight in {1, 3} (opening_chars 300; `--quick`
as above). Beside it are printed the by-prompt leave-one-model-out scores over all five models of every grid setting
(`cross_validate(table, s, by_prompt=True)`'s splits), whose choice would see every model and every prompt.

Cost: a fit on three models, minus outer o and inner i, is the same fit for (o, i) and (i, o), so each setting is fitted
once per pair of left-out models (10 pairs), then once per outer fold for the chosen settings. With `--by-prompt` a fit
is fixed by its setting, its left-out models and its left-out prompt fold: each setting is fitted once per pair and
fold (10 x 5, both models of the pair judged in that fold) and once per model and fold (5 x 5: its by-prompt
leave-one-model-out, which is also the outer score when the setting is chosen), 75 fits, about 7 minutes for four
settings on one core.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import fields, replace

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from scans.data import load_table
from scans.judge.learned import SETTINGS, TRAINING_TABLE, Fitted, Settings, Training, cross_validate
from scans.report.uncertainty import interval, wilson

# SETTINGS (see learned.py) and its neighbours in C, matcher_weight and opening_chars; char n-grams stay on (2, 5).
GRID_C = (4.0, 16.0, 64.0)
GRID_MATCHER_WEIGHT = (1.0, 3.0)
GRID_OPENING_CHARS = (200, 300)
# --by-prompt: 4 settings (with SETTINGS among them), since each costs 75 fits.
BY_PROMPT_C = (16.0, 64.0)
BY_PROMPT_MATCHER_WEIGHT = (1.0, 3.0)
BY_PROMPT_OPENING_CHARS = 300


def grid(quick: bool, by_prompt: bool = False) -> list[Settings]:
    """The candidate settings, `SETTINGS` first (it wins ties)."""
    if quick:
        return [SETTINGS, replace(SETTINGS, C=4.0)]
    if by_prompt:
        product = itertools.product(BY_PROMPT_C, BY_PROMPT_MATCHER_WEIGHT, (BY_PROMPT_OPENING_CHARS,))
    else:
        product = itertools.product(GRID_C, GRID_MATCHER_WEIGHT, GRID_OPENING_CHARS)
    out = [SETTINGS]
    for c, w, n in product:
        s = replace(SETTINGS, C=c, matcher_weight=w, opening_chars=n)
        if s not in out:
            out.append(s)
    return out


def describe(settings: Settings, candidates: list[Settings]) -> str:
    """The fields in which the candidates differ, e.g. "C=16 matcher_weight=3 opening_chars=300"."""
    varying = [f.name for f in fields(Settings) if len({getattr(s, f.name) for s in candidates}) > 1]
    values = {name: getattr(settings, name) for name in varying}
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def correct(data: Training, fitted: Fitted, rows: np.ndarray) -> np.ndarray:
    """Whether the fitted judge agrees with the human label on each of `rows`."""
    return np.asarray(fitted.predict([data.texts[i] for i in rows]), dtype=bool) == data.labels[rows]


def print_pooled(name: str, hits: dict[str, np.ndarray]) -> None:
    """One summary line: the mean of the per-model agreements, and the pooled agreement with its Wilson interval."""
    mean = np.mean([h.mean() for h in hits.values()])
    k, n = sum(int(h.sum()) for h in hits.values()), sum(len(h) for h in hits.values())
    low, high = wilson(k, n)
    print(f"{name:<6} mean over {len(hits)} models {100 * mean:.1f}%, pooled {k}/{n}, 95% Wilson {interval(low, high)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a two-setting grid, for a smoke check")
    ap.add_argument("--by-prompt", action="store_true", help="hold out a prompt fold too, at both levels")
    args = ap.parse_args()
    start = time.perf_counter()

    table = load_table(TRAINING_TABLE)
    # Only `folds`, `seed` and `near_duplicate` shape `Training`, and the grid leaves them as in SETTINGS.
    data = Training.from_table(table, SETTINGS)
    models = sorted(set(data.models))
    candidates = grid(args.quick, args.by_prompt)
    if args.by_prompt:
        nested_by_prompt(table, data, models, candidates)
        print(f"wall time {time.perf_counter() - start:.0f} s")
        return
    rows_of = {m: np.flatnonzero(data.models == m) for m in models}

    def fit_without(left_out: tuple[str, ...], settings: Settings) -> Fitted:
        return data.fit(np.flatnonzero(~np.isin(data.models, left_out)), settings)

    # agree[(s, pair)][m]: agreement on model m (one of `pair`) of setting s fitted without both models of `pair`.
    agree: dict[tuple[int, frozenset[str]], dict[str, float]] = {}
    pairs = list(itertools.combinations(models, 2))
    jobs = list(itertools.product(range(len(candidates)), pairs))
    for s, pair in tqdm(jobs, desc=f"inner fits ({len(candidates)} settings x {len(pairs)} pairs)"):
        fitted = fit_without(pair, candidates[s])
        agree[s, frozenset(pair)] = {m: float(correct(data, fitted, rows_of[m]).mean()) for m in pair}

    chosen: dict[str, int] = {}
    inner: dict[str, float] = {}
    for outer in models:
        scores = [
            np.mean([agree[s, frozenset((outer, m))][m] for m in models if m != outer]) for s in range(len(candidates))
        ]
        chosen[outer] = int(np.argmax(scores))  # first maximum: SETTINGS wins ties
        inner[outer] = float(scores[chosen[outer]])

    outer_correct: dict[str, np.ndarray] = {}
    for outer in tqdm(models, desc="outer fits"):
        fitted = fit_without((outer,), candidates[chosen[outer]])
        outer_correct[outer] = correct(data, fitted, rows_of[outer])

    plain_predictions, _ = cross_validate(table, SETTINGS)
    plain_correct = plain_predictions == data.labels

    print(f"\nnested leave-one-model-out, {len(candidates)} settings, {len(table)} completions of {len(models)} models")
    print(f"{'held-out model':<16} {'chosen settings':<40} {'inner':>6} {'nested':>7} {'plain':>6}")
    for m in models:
        print(
            f"{m:<16} {describe(candidates[chosen[m]], candidates):<40} {100 * inner[m]:>5.1f}% "
            f"{100 * outer_correct[m].mean():>6.1f}% {100 * plain_correct[rows_of[m]].mean():>5.1f}%"
        )
    by_model = {"nested": outer_correct, "plain": {m: plain_correct[rows_of[m]] for m in models}}
    for name, hits in by_model.items():
        print_pooled(name, hits)
    print("inner = the chosen settings' mean agreement over the four inner folds (the held-out model unseen)")
    print(f"plain = leave-one-model-out of SETTINGS ({describe(SETTINGS, candidates)}), whose choice saw every model")
    print(f"wall time {time.perf_counter() - start:.0f} s")


def nested_by_prompt(table: pd.DataFrame, data: Training, models: list[str], candidates: list[Settings]) -> None:
    """`--by-prompt`: nested leave-one-model-out in which every fit also leaves out one prompt fold (module doc)."""
    folds = sorted(set(data.folds.tolist()))

    def fit_and_score(left_out: tuple[str, ...], k: int, settings: Settings, hit: dict[str, np.ndarray]) -> None:
        """Fit without the `left_out` models and without fold k; fill hit[m] on fold k of each left-out model m."""
        fitted = data.fit(np.flatnonzero(~np.isin(data.models, left_out) & (data.folds != k)), settings)
        for m in left_out:
            in_fold = data.folds[data.models == m] == k  # positions within model m's rows
            if in_fold.any():
                hit[m][in_fold] = correct(data, fitted, np.flatnonzero((data.models == m) & (data.folds == k)))

    def empty(of: tuple[str, ...]) -> dict[str, np.ndarray]:
        return {m: np.zeros(int((data.models == m).sum()), dtype=bool) for m in of}

    # inner[(s, pair)][m]: per-row agreement on model m (of `pair`), fold k judged by setting s fitted without both
    # models of `pair` and without fold k.
    pairs = list(itertools.combinations(models, 2))
    inner_hits: dict[tuple[int, frozenset[str]], dict[str, np.ndarray]] = {}
    jobs = list(itertools.product(range(len(candidates)), pairs, folds))
    for s, pair, k in tqdm(
        jobs, desc=f"inner fits ({len(candidates)} settings x {len(pairs)} pairs x {len(folds)} folds)"
    ):
        hit = inner_hits.setdefault((s, frozenset(pair)), empty(pair))
        fit_and_score(pair, k, candidates[s], hit)

    # single[s][m]: per-row agreement on model m, fold k judged by setting s fitted without model m and fold k:
    # `cross_validate(table, candidates[s], by_prompt=True)`'s splits, and the outer score when s is chosen for m.
    single: dict[int, dict[str, np.ndarray]] = {s: empty(tuple(models)) for s in range(len(candidates))}
    jobs = list(itertools.product(range(len(candidates)), models, folds))
    for s, m, k in tqdm(
        jobs, desc=f"outer fits ({len(candidates)} settings x {len(models)} models x {len(folds)} folds)"
    ):
        fit_and_score((m,), k, candidates[s], single[s])

    chosen: dict[str, int] = {}
    inner: dict[str, float] = {}
    for outer in models:
        scores = [
            np.mean([inner_hits[s, frozenset((outer, m))][m].mean() for m in models if m != outer])
            for s in range(len(candidates))
        ]
        chosen[outer] = int(np.argmax(scores))  # first maximum: SETTINGS wins ties
        inner[outer] = float(scores[chosen[outer]])
    outer_correct = {m: single[chosen[m]][m] for m in models}
    plain = single[candidates.index(SETTINGS)]

    print(
        f"\nnested leave-one-model-out by prompt, {len(candidates)} settings, {len(table)} completions of "
        f"{len(models)} models, {len(folds)} prompt folds"
    )
    print(f"{'held-out model':<16} {'chosen settings':<40} {'inner':>6} {'nested':>7} {'plain':>6}")
    for m in models:
        print(
            f"{m:<16} {describe(candidates[chosen[m]], candidates):<40} {100 * inner[m]:>5.1f}% "
            f"{100 * outer_correct[m].mean():>6.1f}% {100 * plain[m].mean():>5.1f}%"
        )
    print_pooled("nested", outer_correct)
    print_pooled("plain", plain)
    print("inner = the chosen settings' mean agreement over the four inner models, each held out with one prompt fold")
    print("        at a time (the held-out model unseen)")
    print(f"plain = by-prompt leave-one-model-out of SETTINGS ({describe(SETTINGS, candidates)}),")
    print("        whose choice saw every model")

    print("\nby-prompt leave-one-model-out of each setting over all five models (cross_validate(..., by_prompt=True))")
    print(f"{'settings':<40} " + " ".join(f"{m:>15}" for m in models) + f" {'mean':>6} {'pooled':>9}  95% Wilson")
    for s, settings in enumerate(candidates):
        hits = single[s]
        k, n = sum(int(h.sum()) for h in hits.values()), sum(len(h) for h in hits.values())
        low, high = wilson(k, n)
        print(
            f"{describe(settings, candidates):<40} "
            + " ".join(f"{100 * hits[m].mean():>14.1f}%" for m in models)
            + f" {100 * np.mean([h.mean() for h in hits.values()]):>5.1f}% {k:>4}/{n:<4}  {interval(low, high)}"
        )


if __name__ == "__main__":
    main()
