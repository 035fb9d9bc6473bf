"""ecoq.accounting and ecoq.sci: formulas checked against hand-computed numbers."""

from datetime import timedelta

import pytest

from ecoq.accounting import (
    EnergyInterval,
    EnergyProfile,
    Intensity,
    MixedSignals,
    NotCovered,
    account,
    emissions_g,
    flat_profile,
    profile_from_series,
    window_energy,
)
from ecoq.forecasting import Forecast, IntensityPoint
from ecoq.sci import Embodied, embodied_g, sci, sci_per_unit, summarize_marks
from tests.seed import at, forecast, series

KWH = 3.6e6


def hourly(values: list[float], start_h: float = 0, **kw: object) -> Intensity:
    return Intensity.from_forecast(forecast("DE", at(start_h), values, **kw))  # type: ignore[arg-type]


def one_interval(start_h: float, end_h: float, energy_j: float) -> EnergyProfile:
    return EnergyProfile(
        (EnergyInterval(at(start_h).timestamp(), at(end_h).timestamp(), energy_j),)
    )


def test_an_interval_straddling_a_step_is_split_exactly() -> None:
    # 1 kWh over 10:30-11:30; 100 g/kWh until 11:00, 300 after: 0.5*100 + 0.5*300 = 200 g
    intensity = hourly([100.0, 300.0], start_h=10)
    assert emissions_g(one_interval(10.5, 11.5, KWH), intensity) == pytest.approx(200.0)
    # 1 kWh over 10:45-12:00 on 100/300: 0.2*100 + 0.8*300 = 260 g
    assert emissions_g(one_interval(10.75, 12, KWH), intensity) == pytest.approx(260.0)


def test_an_interval_over_three_steps_with_finer_steps() -> None:
    # 15-minute steps 40, 80, 120, 160 from 00:00; 3 kWh over 00:10-00:40:
    # 5 min at 40, 15 min at 80, 10 min at 120 of 30 min -> 3*(5*40 + 15*80 + 10*120)/30 = 260 g
    intensity = hourly([40.0, 80.0, 120.0, 160.0], step_h=0.25)
    profile = one_interval(10 / 60, 40 / 60, 3 * KWH)
    assert emissions_g(profile, intensity) == pytest.approx(260.0)


def test_pue_multiplies_the_energy_before_the_intensity() -> None:
    intensity = hourly([100.0, 300.0], start_h=10)
    assert emissions_g(one_interval(10.5, 11.5, KWH), intensity, pue=1.5) == pytest.approx(300.0)
    with pytest.raises(ValueError, match="PUE"):
        emissions_g(one_interval(10.5, 11.5, KWH), intensity, pue=0.9)


def test_an_instantaneous_interval_takes_the_value_in_force() -> None:
    intensity = hourly([100.0, 300.0], start_h=10)
    assert emissions_g(one_interval(11, 11, KWH), intensity) == pytest.approx(300.0)


def test_a_gap_in_the_intensity_is_an_error_naming_the_span() -> None:
    # points at 10:00 and 12:00 with a 1 h step: 11:00-12:00 is a gap
    gappy = Intensity.from_forecast(
        Forecast(
            zone="DE",
            signal="average",
            source="file",
            label="gappy",
            issued_at=at(10),
            step=timedelta(hours=1),
            points=(IntensityPoint(at(10), 100.0), IntensityPoint(at(12), 50.0)),
        )
    )
    assert gappy.uncovered(at(10), at(13)) == [(at(11), at(12))]
    with pytest.raises(NotCovered, match="no value from 2026-11-02T11:00:00Z"):
        emissions_g(one_interval(10.5, 12.5, KWH), gappy)
    with pytest.raises(NotCovered):
        emissions_g(one_interval(9.5, 10.5, KWH), gappy)  # before the first point
    with pytest.raises(NotCovered):
        emissions_g(one_interval(12.5, 13.5, KWH), gappy)  # after the end


def test_profile_from_a_stored_series_splits_each_interval_by_steps() -> None:
    # GPU counter and CPU estimate; samples at 0, 30 and 90 minutes
    stored = series(
        at(10),
        [("gpu:0", "counter"), ("cpu", "estimate")],
        [(0, [0, 0]), (1800, [1.2e6, 0.6e6]), (5400, [2.4e6, 1.2e6])],
    )
    profile = profile_from_series(stored)
    assert profile is not None
    assert profile.energy_j == pytest.approx(3.6e6)
    assert profile.estimate_j == pytest.approx(1.2e6)
    assert profile.method == "partly estimate"
    assert dict(profile.by_device_j) == {"gpu": pytest.approx(2.4e6), "cpu": pytest.approx(1.2e6)}
    # 10:00-10:30 0.5 kWh at 100; 10:30-11:30 0.5 kWh, half at 100 half at 300
    intensity = hourly([100.0, 300.0], start_h=10)
    assert emissions_g(profile, intensity) == pytest.approx(0.5 * 100 + 0.25 * 100 + 0.25 * 300)


def test_energy_method_labels() -> None:
    estimate = profile_from_series(series(at(0), [("cpu", "estimate")], [(0, [0]), (60, [5])]))
    assert estimate is not None and estimate.method == "estimate"
    measured = profile_from_series(series(at(0), [("gpu:0", "counter")], [(0, [0]), (60, [5])]))
    assert measured is not None and measured.method == "measured"
    assert flat_profile(at(0), at(1), 10.0).method == "unknown"
    assert flat_profile(at(0), at(1), 10.0, method="estimate").method == "estimate"
    assert profile_from_series(None) is None
    assert profile_from_series({"segments": []}) is None


def test_counterfactual_is_the_profile_shifted_to_submission() -> None:
    # submitted 09:15, ran 10:30-11:30 with 1 kWh; 400 g/kWh 09-10, 100 10-11, 300 11-12
    intensity = hourly([400.0, 100.0, 300.0], start_h=9)
    result = account(one_interval(10.5, 11.5, KWH), intensity, counterfactual_start=at(9.25))
    assert result.realized_g == pytest.approx(200.0)
    # shifted to 09:15-10:15: 0.75*400 + 0.25*100 = 325 g
    assert result.counterfactual_g == pytest.approx(325.0)
    assert result.avoided_g == pytest.approx(125.0)
    assert result.counterfactual_start == at(9.25)
    p = result.provenance
    assert (p.provider, p.signal, p.intensity, p.status) == (
        "file",
        "average",
        "forecast",
        "provisional",
    )
    assert p.energy_method == "measured"


def test_pue_applies_to_both_sides() -> None:
    intensity = hourly([400.0, 100.0, 300.0], start_h=9)
    result = account(
        one_interval(10.5, 11.5, KWH), intensity, counterfactual_start=at(9.25), pue=1.2
    )
    assert result.realized_g == pytest.approx(240.0)
    assert result.counterfactual_g == pytest.approx(390.0)
    assert result.avoided_g == pytest.approx(150.0)
    assert result.facility_energy_j == pytest.approx(1.2 * KWH)


def test_status_follows_the_kind_of_values() -> None:
    realized = hourly([400.0, 100.0, 300.0], start_h=9, realized=True)
    profile = one_interval(10.5, 11.5, KWH)
    assert account(profile, realized, counterfactual_start=at(9)).provenance.status == "final"
    forecasted = hourly([400.0, 100.0, 300.0], start_h=9)
    final = account(profile, forecasted, counterfactual_start=at(9), finalized=True)
    assert final.provenance.status == "final-forecast"
    assert "final-forecast: average forecast from file" in final.provenance.describe()


def test_estimate_energy_stays_labelled() -> None:
    profile = profile_from_series(series(at(10), [("cpu", "estimate")], [(0, [0]), (3600, [KWH])]))
    assert profile is not None
    result = account(profile, hourly([100.0, 300.0], start_h=10), counterfactual_start=at(10))
    assert result.provenance.energy_method == "estimate"
    assert "estimate energy" in result.provenance.describe()
    assert result.realized_g == pytest.approx(100.0)


def test_signals_and_kinds_are_never_mixed() -> None:
    profile = one_interval(10.5, 11.5, KWH)
    average = hourly([100.0, 300.0], start_h=10)
    marginal = hourly([500.0, 600.0], start_h=10, signal="marginal", source="watttime")
    with pytest.raises(MixedSignals, match="average forecast intensity from file"):
        account(profile, average, counterfactual_start=at(10), home_intensity=marginal)
    realized = hourly([100.0, 300.0], start_h=10, realized=True)
    with pytest.raises(MixedSignals):
        account(profile, average, counterfactual_start=at(10), home_intensity=realized)
    other_provider = hourly([100.0, 300.0], start_h=10, source="electricitymaps")
    with pytest.raises(MixedSignals):
        average.filled_from(other_provider)


def test_a_relocated_run_compares_with_the_home_zone() -> None:
    here = hourly([50.0, 50.0], start_h=10)
    home = Intensity.from_forecast(forecast("PL", at(10), [700.0, 700.0]))
    result = account(
        one_interval(10, 11, KWH), here, counterfactual_start=at(10), home_intensity=home
    )
    assert (result.realized_g, result.counterfactual_g) == (
        pytest.approx(50.0),
        pytest.approx(700.0),
    )


def test_filled_from_fills_only_the_gaps() -> None:
    newer = hourly([10.0, 20.0], start_h=2)  # 02:00-04:00
    older = hourly([1.0, 2.0, 3.0, 4.0, 5.0], start_h=0)  # 00:00-05:00
    combined = newer.filled_from(older)
    assert [combined.value_at(at(h)) for h in (0, 1, 2, 3, 4)] == [1.0, 2.0, 10.0, 20.0, 5.0]
    assert combined.uncovered(at(0), at(5)) == []
    with pytest.raises(NotCovered):
        combined.value_at(at(5))


def test_energy_between_and_window_energy() -> None:
    profile = one_interval(10, 12, 2 * KWH)
    assert profile.energy_between_j(at(10.5), at(11)) == pytest.approx(0.5 * KWH)
    windows = [{"start": "2026-11-02T11:00:00Z", "end": "2026-11-02T13:00:00Z"}]
    assert window_energy(profile, windows) == [pytest.approx(KWH)]


def test_sci_with_and_without_embodied_emissions() -> None:
    # O = 200 g; 2 GPUs for 1 h at 30 g/GPU-hour + host 4 g/h: M = 64 g
    m = embodied_g(Embodied(g_per_gpu_hour=30, g_per_host_hour=4), gpus=2, duration_s=3600)
    assert m == pytest.approx(64.0)
    per_unit = sci_per_unit(200.0, m, {"epoch": 10, "inference": 0}, signal="average")
    assert per_unit["job"].g_per_unit == pytest.approx(264.0)
    assert per_unit["epoch"].g_per_unit == pytest.approx(26.4)
    assert per_unit["epoch"].embodied_set
    assert "inference" not in per_unit
    unset = embodied_g(Embodied(), gpus=2, duration_s=3600)
    assert unset is None
    without = sci(200.0, unset, units=10, unit="epoch")
    assert without.g_per_unit == pytest.approx(20.0)
    assert without.embodied_g == 0.0 and not without.embodied_set
    with pytest.raises(ValueError, match="R = 0"):
        sci(200.0, None, units=0)


def test_summarize_marks_adds_units_and_keeps_windows() -> None:
    records = [
        {"t": "2026-11-02T10:00:00Z", "name": "train", "kind": "start", "pid": 1},
        {"t": "2026-11-02T10:10:00Z", "name": "train", "kind": "mark", "unit": "epoch", "n": 1},
        {"t": "2026-11-02T10:20:00Z", "name": "train", "kind": "mark", "unit": "epoch", "n": 2},
        {"t": "2026-11-02T10:30:00Z", "name": "eval", "kind": "mark", "unit": "inference", "n": 32},
        {"name": "train", "kind": "mark", "unit": "epoch", "n": "many"},
        {"name": "train", "kind": "mark", "unit": "epoch", "n": True},
        {
            "t": "2026-11-02T10:40:00Z",
            "name": "eval",
            "kind": "window",
            "label": "val",
            "start": "2026-11-02T10:35:00Z",
        },
    ]
    summary = summarize_marks(records)
    assert summary["units"] == {"epoch": 3.0, "inference": 32.0}
    assert summary["windows"] == [
        {
            "name": "eval",
            "label": "val",
            "start": "2026-11-02T10:35:00Z",
            "end": "2026-11-02T10:40:00Z",
        }
    ]
    assert summary["trackers"] == ["train", "eval"]
