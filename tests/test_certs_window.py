"""The pure parts of certificates: renewal timing (certbot's rule), expiry judgement, ACME retries."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from fazt_agent.certs.problems import Problem, problem_from_json, retry_delay
from fazt_agent.certs.window import judge_expiry, renewal_time

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
ACME = "urn:ietf:params:acme:error:"


def days(n: float) -> timedelta:
    return timedelta(days=n)


def test_a_90_day_certificate_renews_with_30_days_left() -> None:
    assert renewal_time(T0, T0 + days(90)) == T0 + days(60)


def test_a_6_day_certificate_renews_at_half_its_life() -> None:
    assert renewal_time(T0, T0 + days(6)) == T0 + days(3)


def test_the_short_lifetime_rule_starts_below_10_days() -> None:
    assert renewal_time(T0, T0 + days(10)) == T0 + days(10) - days(10) / 3
    assert renewal_time(T0, T0 + days(9.9)) == T0 + days(9.9) / 2


def test_renew_before_replaces_the_rule_with_a_fixed_margin() -> None:
    assert renewal_time(T0, T0 + days(90), renew_before=14 * 86400) == T0 + days(76)


@given(lifetime=st.floats(min_value=0.01, max_value=3650), renew_before=st.none() | st.floats(0, 3650 * 86400))
def test_the_renewal_time_never_falls_after_expiry(lifetime: float, renew_before: float | None) -> None:
    not_after = T0 + days(lifetime)
    at = renewal_time(T0, not_after, renew_before)
    assert at <= not_after
    if renew_before is None:
        left = (not_after - at) / (not_after - T0)
        assert abs(left - (0.5 if lifetime < 10 else 1 / 3)) < 1e-6


def test_expiry_is_ok_before_the_window_warning_in_it_and_critical_near_the_end() -> None:
    not_after = T0 + days(90)

    def at(day: float) -> str:
        return judge_expiry(T0, not_after, T0 + days(day), warning=14, critical=7).status

    assert [at(0), at(59), at(61), at(80), at(84), at(89.9), at(91)] == \
        ["ok", "ok", "warning", "warning", "critical", "critical", "critical"]
    expired = judge_expiry(T0, not_after, T0 + days(93), warning=14, critical=7)
    assert expired.message == "expired 3.0 days ago (2026-04-01 00:00 UTC)" and expired.in_window
    window = judge_expiry(T0, not_after, T0 + days(61), warning=14, critical=7)
    assert window.in_window and window.message.startswith("29.0 days left (until 2026-04-01): in its renewal window")


def test_a_warning_threshold_beyond_the_window_warns_first() -> None:
    e = judge_expiry(T0, T0 + days(365), T0 + days(200), warning=180, critical=7)  # window from day 243
    assert e.status == "warning" and not e.in_window and "at or below the warning 180 days" in e.message


def test_a_certificate_not_yet_valid_is_unknown_and_not_to_be_renewed() -> None:
    """A renewal cannot fix a host clock that is behind the CA's: it would loop."""
    e = judge_expiry(T0, T0 + days(90), T0 - days(1), warning=14, critical=7)
    assert e.status == "unknown" and not e.in_window
    assert e.message.startswith("not valid before 2026-01-01") and "is the clock right?" in e.message


def test_bad_nonces_are_retried_at_once_a_few_times() -> None:
    nonce = Problem(ACME + "badNonce", "stale")
    assert [retry_delay(nonce, n, 0, 120) for n in range(1, 6)] == [0.0, 0.0, 0.0, 0.0, None]


def test_rate_limits_wait_for_retry_after_within_the_budget_only() -> None:
    limited = Problem(ACME + "rateLimited", "too many", 429, retry_after=20)
    assert retry_delay(limited, 1, 0, 120) == 20
    assert retry_delay(limited, 1, 110, 120) is None          # would go beyond the budget
    hours = Problem(ACME + "rateLimited", "too many", 429, retry_after=3 * 3600)
    assert retry_delay(hours, 1, 0, 120) is None              # give up now, never hammer
    no_header = Problem(ACME + "rateLimited", "too many", 429)
    assert [retry_delay(no_header, n, 0, 1000) for n in (1, 2, 3)] == [30.0, 60.0, None]


def test_server_errors_and_lost_connections_back_off_exponentially() -> None:
    for problem in (Problem(ACME + "serverInternal", "oops", 500), Problem("connection", "refused")):
        assert [retry_delay(problem, n, 0, 120) for n in (1, 2, 3)] == [1.0, 2.0, None]


def test_failed_challenges_and_refusals_are_not_retried() -> None:
    for code in ("unauthorized", "incorrectResponse", "rejectedIdentifier", "badCSR", "dns"):
        assert retry_delay(Problem(ACME + code, "no", 403), 1, 0, 120) is None


def test_a_problem_document_keeps_type_detail_status_and_identifier() -> None:
    doc = {"type": ACME + "unauthorized", "detail": "404 from http://web.fazt.test/...", "status": 403,
           "identifier": {"type": "dns", "value": "web.fazt.test"},
           "subproblems": [{"type": ACME + "caa", "detail": "CAA forbids"}]}
    problem = problem_from_json(doc, status=400)
    assert problem.code == "unauthorized" and problem.status == 403 and problem.identifier == "web.fazt.test"
    assert problem.to_json()["subproblems"] == [{"type": ACME + "caa", "detail": "CAA forbids", "status": None}]
    assert str(problem) == "unauthorized for web.fazt.test: 404 from http://web.fazt.test/..."
    assert problem_from_json({"type": ACME + "malformed", "detail": "x"}, status=400).status == 400
