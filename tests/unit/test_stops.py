"""meshd/runner/stops.py: text held back at a possible stop sequence, cut at the first match."""

from __future__ import annotations

from meshd.runner.stops import StopMatcher


class TestStopMatcher:
    def test_text_passes_through_without_stops(self) -> None:
        assert StopMatcher(()).feed("abc") == ("abc", False)

    def test_holds_back_a_possible_start_then_releases_it(self) -> None:
        stops = StopMatcher(("END",))
        assert stops.feed("hello E") == ("hello ", False)
        assert stops.feed("x") == ("Ex", False)

    def test_cuts_at_a_stop_split_across_pieces(self) -> None:
        stops = StopMatcher(("END", "\n\n"))
        assert stops.feed("one E") == ("one ", False)
        assert stops.feed("N") == ("", False)
        assert stops.feed("D and more") == ("", True)

    def test_earliest_stop_wins(self) -> None:
        assert StopMatcher(("b", "a")).feed("xxabxx") == ("xx", True)

    def test_flush_returns_what_was_held(self) -> None:
        stops = StopMatcher(("END",))
        stops.feed("tail EN")
        assert stops.flush() == "EN"
