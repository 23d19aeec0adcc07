"""Grafana's time strings, as the plugin SDK's gtime package and go-datemath read them (spec-query §3).

`parse_range(from, to, now)` gives one TimeRange per request (epoch ms, a single `now`); durations
(`parse_duration`), SQL intervals (`parse_interval`), and the step helpers `format_interval` and
`round_interval` serve the backends.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from datetime import UTC, datetime, timedelta, timezone

import msgspec

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


class TimeRange(msgspec.Struct, frozen=True):
    """An absolute time range in epoch milliseconds (UTC)."""

    from_ms: int
    to_ms: int

    @property
    def start(self) -> datetime:
        """`from` as an aware UTC datetime."""
        return EPOCH + timedelta(milliseconds=self.from_ms)

    @property
    def end(self) -> datetime:
        """`to` as an aware UTC datetime."""
        return EPOCH + timedelta(milliseconds=self.to_ms)

    @property
    def duration_ms(self) -> int:
        """`to - from` in milliseconds."""
        return self.to_ms - self.from_ms


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime (floored, as Go's UnixMilli)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# -- durations ------------------------------------------------------------------------------------------

_GO_UNITS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_GO_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_FIXED = {"d": 86_400_000, "w": 7 * 86_400_000, "y": 365.25 * 86_400_000, "M": 365.25 * 86_400_000 / 12}


def parse_go_duration(text: str) -> float:
    """Go's time.ParseDuration, in milliseconds; ValueError when it is not one."""
    sign = 1.0
    rest = text
    if rest[:1] in "+-" and rest:
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    position = 0
    while position < len(rest):
        match = _GO_PART.match(rest, position)
        if match is None or match.group(1) in ("", "."):
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    return sign * total


def parse_duration(text: str) -> float:
    """gtime.ParseDuration in milliseconds: Go syntax, or `<int>d|w|M|y` with fixed lengths."""
    if text and text[-1] in _FIXED:
        number = text[:-1]
        if not re.fullmatch(r"[+-]?[0-9]+", number):
            raise ValueError(f"invalid duration {text!r}")
        return int(number) * _FIXED[text[-1]]
    return parse_go_duration(text)


def parse_interval(text: str, now: datetime) -> float:
    """gtime.ParseInterval in milliseconds: like parse_duration, but d/w/M/y are calendar steps back from now."""
    if text and text[-1] in _FIXED:
        number = text[:-1]
        if not re.fullmatch(r"[+-]?[0-9]+", number):
            raise ValueError(f"invalid interval {text!r}")
        count = int(number)
        unit = text[-1]
        if unit == "d":
            then = now - timedelta(days=count)
        elif unit == "w":
            then = now - timedelta(weeks=count)
        elif unit == "M":
            then = _add_months(now, -count)
        else:
            then = _add_months(now, -12 * count)
        return (now - then) / MS
    return parse_go_duration(text)


def parse_interval_string(text: str) -> float:
    """gtime.ParseIntervalStringToTimeDuration in milliseconds: `<...>` stripped, bare digits are seconds."""
    cleaned = text.replace("<", "").replace(">", "").strip()
    if re.fullmatch(r"[0-9]+", cleaned):
        return int(cleaned) * 1000.0
    return parse_duration(cleaned)


_FORMAT_UNITS = ((365 * 86_400_000, "y"), (86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s"))


def format_interval(ms: float) -> str:
    """gtime.FormatInterval: the largest whole unit, e.g. 90 s -> "1m", 1.5 s -> "1s", under 1 ms -> "1ms"."""
    for size, unit in _FORMAT_UNITS:
        if ms >= size:
            return f"{int(ms // size)}{unit}"
    return f"{max(int(ms), 1)}ms"


_ROUNDING = (
    (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1_500, 1_000),
    (3_500, 2_000), (7_500, 5_000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000), (45_000, 30_000),
    (90_000, 60_000), (210_000, 120_000), (450_000, 300_000), (750_000, 600_000), (1_050_000, 900_000),
    (1_500_000, 1_200_000), (2_700_000, 1_800_000), (5_400_000, 3_600_000), (9_000_000, 7_200_000),
    (16_200_000, 10_800_000), (32_400_000, 21_600_000), (86_400_000, 43_200_000), (172_800_000, 86_400_000),
    (604_800_000, 86_400_000), (1_814_400_000, 604_800_000),
)
_LIMITS = [limit for limit, _ in _ROUNDING]
_YEAR_MS = 365 * 86_400_000


def round_interval(ms: float) -> float:
    """gtime.RoundInterval: a raw interval in ms to a "nice" one (spec-query §3.1)."""
    if ms <= _LIMITS[-1]:
        return float(_ROUNDING[bisect_left(_LIMITS, ms)][1])  # the nice value of the first limit >= ms
    return 30 * 86_400_000.0 if ms < 2 * _YEAR_MS else float(_YEAR_MS)


def go_duration_string(ms: float) -> str:
    """A duration as Go's Duration.String() writes it: `15s`, `1m0s`, `1h30m0s`, `500ms`."""
    if ms == 0:
        return "0s"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        text = f"{ms:.6f}".rstrip("0").rstrip(".")
        return f"{sign}{text}ms"
    seconds = ms / 1000
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    secs = f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{sign}{int(hours)}h{int(minutes)}m{secs}"
    if minutes:
        return f"{sign}{int(minutes)}m{secs}"
    return f"{sign}{secs}"


# -- datemath -------------------------------------------------------------------------------------------

_ABSOLUTE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<mo>\d{2})(?:-(?P<d>\d{2})(?:T(?P<h>\d{2})(?::(?P<mi>\d{2})(?::(?P<s>\d{2})"
    r"(?:\.(?P<f>\d+))?)?)?)?)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?"
)
_OPERATION = re.compile(r"([+-])(\d*)(fy|fQ|[yQMwdbhHms])|/(fy|fQ|[yQMwdbhHms])")


def _add_months(moment: datetime, months: int) -> datetime:
    """Go's AddDate(0, months, 0): the day overflows into the next month instead of being clamped."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    first = moment.replace(year=year, month=month + 1, day=1)
    return first + timedelta(days=moment.day - 1)


def _add(moment: datetime, count: int, unit: str) -> datetime:
    if unit in ("y", "fy"):
        return _add_months(moment, 12 * count)
    if unit in ("Q", "fQ"):
        return _add_months(moment, 3 * count)
    if unit == "M":
        return _add_months(moment, count)
    if unit == "w":
        return moment + timedelta(weeks=count)
    if unit == "d":
        return moment + timedelta(days=count)
    if unit == "b":  # business days: Monday to Friday, stepped day by day but whole weeks at once
        step = 1 if count >= 0 else -1
        remaining = abs(count)
        if remaining:
            moment = _business_day(moment, step)
            remaining -= 1
        weeks, remaining = divmod(remaining, 5)  # from a weekday, five business days are seven days
        moment += timedelta(days=7 * step * weeks)
        for _ in range(remaining):
            moment = _business_day(moment, step)
        return moment
    if unit in ("h", "H"):
        return moment + timedelta(hours=count)
    if unit == "m":
        return moment + timedelta(minutes=count)
    return moment + timedelta(seconds=count)


def _truncate(moment: datetime, unit: str) -> datetime:
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit in ("y", "fy"):
        return day.replace(month=1, day=1)
    if unit in ("Q", "fQ"):
        return day.replace(month=(moment.month - 1) // 3 * 3 + 1, day=1)
    if unit == "M":
        return day.replace(day=1)
    if unit == "w":
        return day - timedelta(days=moment.weekday())  # weeks start on Monday
    if unit in ("d", "b"):
        return day
    if unit in ("h", "H"):
        return moment.replace(minute=0, second=0, microsecond=0)
    if unit == "m":
        return moment.replace(second=0, microsecond=0)
    return moment.replace(microsecond=0)


def _round(moment: datetime, unit: str, up: bool) -> datetime:
    start = _truncate(moment, unit)
    if not up:
        return start
    return _add(start, 1, unit if unit != "b" else "d") - MS


def parse_datemath(text: str, now: datetime, *, round_up: bool = False) -> datetime:
    """A go-datemath expression (`now-6h`, `now/d`, `2024-01-01||+1M`); ValueError when it is not one."""
    if text.startswith("now"):
        moment, rest = now, text[3:]
    else:
        match = _ABSOLUTE.match(text)
        if match is None:
            raise ValueError(f"invalid date {text!r}")
        parts = match.groupdict()
        fraction = (parts["f"] or "0")[:6].ljust(6, "0")
        zone = UTC
        if parts["tz"] and parts["tz"] != "Z":
            hours, minutes = int(parts["tz"][1:3]), int(parts["tz"][4:6])
            offset = timedelta(hours=hours, minutes=minutes)
            zone = timezone(offset if parts["tz"][0] == "+" else -offset)
        moment = datetime(int(parts["y"]), int(parts["mo"] or 1), int(parts["d"] or 1), int(parts["h"] or 0),
                          int(parts["mi"] or 0), int(parts["s"] or 0), int(fraction), tzinfo=zone).astimezone(UTC)
        rest = text[match.end():]
        if rest:
            if not rest.startswith("||"):
                raise ValueError(f"invalid date {text!r}")
            rest = rest[2:]
    position = 0
    while position < len(rest):
        match = _OPERATION.match(rest, position)
        if match is None:
            raise ValueError(f"invalid date math {text!r}")
        if match.group(4):
            moment = _round(moment, match.group(4), round_up)
        else:
            count = int(match.group(2) or "1")
            moment = _add(moment, -count if match.group(1) == "-" else count, match.group(3))
        position = match.end()
    return moment


def _business_day(moment: datetime, step: int) -> datetime:
    moment += timedelta(days=step)
    while moment.weekday() >= 5:
        moment += timedelta(days=step)
    return moment


def parse_time(text: str, now: datetime, *, round_up: bool = False) -> datetime:
    """One `from`/`to` string: epoch ms, a duration back from now, or datemath; anything else is epoch 0."""
    text = text.strip()
    if re.fullmatch(r"[+-]?[0-9]+", text):
        value = int(text) if len(text) <= 24 else 2**63  # longer is past int64 (and int() refuses 4300 digits)
        if -(2**63) <= value < 2**63:
            try:
                return EPOCH + timedelta(milliseconds=value)
            except OverflowError:
                return EPOCH
        return EPOCH
    try:
        return now - timedelta(milliseconds=parse_duration(text))
    except (ValueError, OverflowError):
        pass
    try:
        return parse_datemath(text, now, round_up=round_up)
    except (ValueError, OverflowError):
        return EPOCH


def parse_range(from_text: str, to_text: str, now: datetime) -> TimeRange:
    """The request's time range: `to` rounds up (`now/d` ends at 23:59:59.999), both with the same `now`."""
    return TimeRange(to_ms(parse_time(from_text, now)), to_ms(parse_time(to_text, now, round_up=True)))

