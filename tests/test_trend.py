from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fazt_agent.pulse.trend import fill_rate, hours_until_full

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def line(rate_per_hour: float, start: float, minutes: list[int]) -> list[tuple[datetime, float]]:
    return [(T0 + timedelta(minutes=m), start + rate_per_hour * m / 60) for m in minutes]


def test_fill_rate_of_a_straight_line_is_its_slope_per_hour():
    assert fill_rate(line(1000.0, 5e9, [0, 30, 60, 90])) == pytest.approx(1000.0)


def test_fill_rate_is_negative_when_usage_shrinks():
    assert fill_rate(line(-500.0, 5e9, [0, 20, 40])) == pytest.approx(-500.0)


def test_fill_rate_fits_noisy_points_by_least_squares():
    points = [(T0, 10.0), (T0 + timedelta(hours=1), 30.0), (T0 + timedelta(hours=2), 30.0),
              (T0 + timedelta(hours=3), 50.0)]
    assert fill_rate(points) == pytest.approx(12.0)


def test_fill_rate_does_not_depend_on_point_order():
    points = line(42.0, 0.0, [0, 15, 45, 120])
    assert fill_rate(points[::-1]) == pytest.approx(fill_rate(points))


def test_fill_rate_needs_three_points():
    assert fill_rate(line(1000.0, 0.0, [0, 60])) is None


def test_fill_rate_needs_points_spanning_ten_minutes():
    assert fill_rate(line(1000.0, 0.0, [0, 3, 9])) is None
    assert fill_rate(line(1000.0, 0.0, [0, 3, 10])) == pytest.approx(1000.0)


def test_fill_rate_gives_up_on_points_all_at_the_same_instant():
    assert fill_rate([(T0, 1.0), (T0, 2.0), (T0, 3.0)], min_span=timedelta(0)) is None


def test_hours_until_full_divides_free_space_by_the_rate():
    assert hours_until_full(10_000.0, 1_000.0) == pytest.approx(10.0)


@pytest.mark.parametrize("rate", [None, 0.0, -5.0])
def test_hours_until_full_is_none_unless_growing(rate):
    assert hours_until_full(10_000.0, rate) is None


def test_hours_until_full_is_zero_when_already_full():
    assert hours_until_full(-3.0, 1.0) == 0.0


@given(rate=st.floats(-1e9, 1e9), offset=st.floats(0, 1e12),
       minutes=st.lists(st.integers(0, 24 * 60), min_size=3, max_size=30, unique=True))
def test_fill_rate_recovers_any_linear_rate(rate, offset, minutes):
    points = line(rate, offset, minutes)
    result = fill_rate(points)
    if max(minutes) - min(minutes) < 10:
        assert result is None
    else:
        assert result == pytest.approx(rate, rel=1e-6, abs=1e-3 * (1 + offset / 1e9))
