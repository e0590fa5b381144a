"""meshd/engine/failures.py: why a runner ended, and when a failed model is tried again."""

from __future__ import annotations

import math
import signal

import pytest

from meshd.engine.failures import (
    BACKOFF_MAX_S,
    MAX_LOAD_FAILURES,
    FailureRecord,
    Verdict,
    after_failure,
    after_load,
    describe_exit,
    next_attempt,
    retry_delay,
)

STAMP = (100, 5, 7)


class TestDescribeExit:
    @pytest.mark.parametrize(
        ("sig", "words"),
        [
            (signal.SIGILL, "SIGILL (illegal instruction)"),
            (signal.SIGSEGV, "SIGSEGV (segmentation fault)"),
            (signal.SIGABRT, "SIGABRT (aborted)"),
            (signal.SIGKILL, "SIGKILL (killed: out of memory, or by hand)"),
            (signal.SIGBUS, "SIGBUS (bus error)"),
        ],
    )
    def test_signals_are_named_and_explained(self, sig: signal.Signals, words: str) -> None:
        assert describe_exit(-sig) == f"runner killed by {words}"

    def test_a_signal_without_words_is_named(self) -> None:
        assert describe_exit(-signal.SIGUSR1) == "runner killed by SIGUSR1"

    def test_an_unknown_signal_number(self) -> None:
        assert describe_exit(-99) == "runner killed by signal 99"

    def test_an_exit_status_and_the_last_line(self) -> None:
        assert describe_exit(3, "out of cheese") == "runner exited with status 3: out of cheese"

    def test_a_clean_exit_is_a_status_not_a_signal(self) -> None:
        assert describe_exit(0) == "runner exited with status 0"

    def test_a_closed_connection(self) -> None:
        assert describe_exit(None) == "runner closed its connection"

    def test_the_daemons_own_reason_wins_over_the_status(self) -> None:
        text = describe_exit(-signal.SIGKILL, "", "sent nothing for 2 s")
        assert text == "runner sent nothing for 2 s; killed"

    def test_build_paths_are_cut_to_the_file_name(self) -> None:
        line = "/tmp/pip-wheel-x/llama.cpp/ggml/src/ops.cpp:135: binary_op: unsupported types"
        assert describe_exit(-signal.SIGABRT, line) == (
            "runner killed by SIGABRT (aborted): ops.cpp:135: binary_op: unsupported types"
        )

    def test_paths_without_a_line_number_stay(self) -> None:
        assert describe_exit(1, "cannot open /models/x.gguf") == (
            "runner exited with status 1: cannot open /models/x.gguf"
        )


class TestBackoff:
    def test_the_first_failure_is_tried_again_at_once(self) -> None:
        assert retry_delay(0) == 0.0 and retry_delay(1) == 0.0

    def test_then_the_delay_doubles(self) -> None:
        assert [retry_delay(n) for n in (2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0]

    def test_up_to_a_minute(self) -> None:
        assert retry_delay(7) == 32.0
        assert retry_delay(8) == BACKOFF_MAX_S == 60.0
        assert retry_delay(500) == 60.0


class TestRecord:
    def test_failures_count_in_a_row(self) -> None:
        record = after_failure(FailureRecord(), 10.0, STAMP, at_load=True)
        assert record == FailureRecord(1, 1, 10.0, STAMP)
        record = after_failure(record, 11.0, STAMP, at_load=False)
        assert record == FailureRecord(2, 1, 11.0, STAMP)

    def test_a_changed_file_starts_the_load_count_again(self) -> None:
        record = FailureRecord(5, 2, 1.0, STAMP)
        changed = after_failure(record, 2.0, (101, 5, 7), at_load=True)
        assert changed == FailureRecord(6, 1, 2.0, (101, 5, 7))

    def test_a_load_ends_the_run_of_load_failures_only(self) -> None:
        assert after_load(FailureRecord(4, 2, 3.0, STAMP)) == FailureRecord(4, 0, 3.0, STAMP)


class TestNextAttempt:
    def test_no_failure_tries(self) -> None:
        assert next_attempt(FailureRecord(), 0.0, None) == (Verdict.TRY, 0.0)

    def test_within_the_backoff_it_waits_the_rest(self) -> None:
        record = FailureRecord(3, 0, 100.0, STAMP)  # 2 s of backoff
        assert next_attempt(record, 100.5, STAMP) == (Verdict.WAIT, 1.5)

    def test_under_a_second_left_it_still_waits(self) -> None:
        record = FailureRecord(2, 0, 100.0, STAMP)  # 1 s of backoff
        assert next_attempt(record, 100.75, STAMP) == (Verdict.WAIT, 0.25)

    def test_exactly_at_the_end_of_the_backoff_it_tries(self) -> None:
        record = FailureRecord(3, 0, 100.0, STAMP)
        assert next_attempt(record, 102.0, STAMP) == (Verdict.TRY, 0.0)

    def test_one_load_failure_short_of_the_limit_is_still_tried(self) -> None:
        record = FailureRecord(MAX_LOAD_FAILURES - 1, MAX_LOAD_FAILURES - 1, 0.0, STAMP)
        assert next_attempt(record, 1000.0, STAMP)[0] is Verdict.TRY

    def test_at_the_limit_of_load_failures_it_gives_up(self) -> None:
        record = FailureRecord(MAX_LOAD_FAILURES, MAX_LOAD_FAILURES, 0.0, STAMP)
        assert next_attempt(record, 1e9, STAMP) == (Verdict.GIVEN_UP, math.inf)

    def test_serving_failures_alone_never_give_up(self) -> None:
        record = FailureRecord(50, 0, 0.0, STAMP)
        assert next_attempt(record, 1e9, STAMP)[0] is Verdict.TRY

    def test_a_changed_file_is_tried_at_once(self) -> None:
        record = FailureRecord(MAX_LOAD_FAILURES, MAX_LOAD_FAILURES, 100.0, STAMP)
        assert next_attempt(record, 100.0, (100, 6, 7)) == (Verdict.TRY, 0.0)
