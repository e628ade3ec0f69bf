"""bench/common's interleaving: each run once per round, the order turning round by round, and
ratios taken within a round (so a machine that slows down mid-benchmark moves both figures of
a round alike, not the ratio)."""

from __future__ import annotations

import itertools

from bench.common import interleaved, ratios, spread


def test_runs_take_turns_and_the_order_turns_each_round():
    seen = []
    figures = interleaved({name: (lambda name=name: seen.append(name) or len(seen))
                           for name in ("a", "b", "c")}, rounds=3)
    assert seen == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert figures == {"a": [1, 6, 7], "b": [2, 5, 8], "c": [3, 4, 9]}


def test_ratios_are_taken_round_by_round_and_survive_a_drifting_machine():
    # The machine slows down 10 % run after run; b does half of a's work in its own round.
    clock = itertools.count()
    speed = {"a": 100.0, "b": 50.0}
    figures = interleaved({name: (lambda name=name: speed[name] / (1 + 0.1 * next(clock)))
                           for name in speed}, rounds=6)
    # a's figures fall from 100 to 48 over the runs, yet b's ratio to a in each round stays
    # within one run's drift of 0.5.
    assert figures["a"][0] == 100.0 and figures["a"][-1] < 50
    by_round = ratios(figures, "a")["b"]
    assert 0.45 < by_round["min"] <= by_round["median"] <= by_round["max"] < 0.55
    assert spread([3, 1, 2]) == {"median": 2, "min": 1, "max": 3}


def test_a_ratio_is_of_two_runs_of_one_round_not_of_two_medians():
    # Round 2 ran b while the machine was busy for a moment: its ratio alone shows it.
    assert ratios({"a": [100, 50, 80], "b": [50, 40, 40]}, "a") == {
        "b": {"median": 0.5, "min": 0.5, "max": 0.8}}
