"""The reproduce report's arithmetic on made-up curves (the CLI test runs the real thing)."""

from d2lgru.reproduce import ending, spike_windows


def run(history, gates="both"):
    return {"history": history, "config": {"gates": gates}}


def test_ending_reads_the_tail_of_a_curve():
    curve = [20.0] * 380 + [1.1] * 100 + [1.3] * 3 + [1.06] * 17
    assert ending(curve) == {"last": 1.06, "settled": 1.06, "first_below": 381,
                             "above_last_100": 3, "peak_last_100": 1.3}
    assert ending([3.0, 2.0])["first_below"] is None


def test_spike_windows_share_epochs_above_the_bar_by_stretch():
    spiky = [1.0] * 95 + [1.3] * 5          # the last stretch of 10 is half above 1.15
    calm = [1.0] * 100
    table = spike_windows([run(spiky), run(calm), run([2.0] * 100, gates="none")],
                          [{"history": calm}])
    assert "over all 3 GRU runs with both gates" in table   # the plain RNN is left out
    assert table.splitlines()[3].startswith("| 1–10 | 11–20 |")
    assert table.splitlines()[-1] == "| " + " | ".join(["0%"] * 9 + ["17%"]) + " |"
    assert spike_windows([run(calm), run(calm[:50])], []) == ""  # no common window
