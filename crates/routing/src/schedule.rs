//! Business-hours schedules, compiled once from an [`InboundConfig`].
//!
//! Rules (each has a test below):
//! * Times are wall-clock times in the deployment's IANA zone; `start_time` is inclusive,
//!   `end_time` exclusive, at minute resolution (a window ending 18:00 is closed at 18:00:00).
//! * `start_time == end_time` means the whole day (00:00–24:00) on each allowed day; `24:00` is
//!   accepted as an `end_time` meaning midnight at the end of the day.
//! * `end_time < start_time` is an overnight window. The day the window **started** on decides:
//!   a Friday 22:00–06:00 window is open Friday 22:00 to Saturday 06:00 even if Saturday is not
//!   an allowed day, and a Sunday 22:00–06:00 window runs into Monday morning with only
//!   Sunday allowed. One rule, no surprises at midnight.
//! * `allowed_days` are weekdays in the deployment's zone, not in UTC.
//! * Daylight saving: because the window is wall-clock, a spring-forward day has one hour less
//!   inside a window spanning 02:00–03:00 (local times that do not exist are never "inside"),
//!   and on a fall-back day the repeated hour is inside the window both times.

use std::fmt;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use crate::error::RoutingError;
use crate::model::InboundConfig;

const MINUTES_PER_DAY: u16 = 24 * 60;
const SECONDS_PER_DAY: i64 = 86_400;
/// 1970-01-01 (day 0 of the Unix epoch) was a Thursday; with Monday = 0 that is 3.
const EPOCH_WEEKDAY: i64 = 3;
/// Day names in the seed's spelling, Monday first (bit 0 of the mask).
const DAY_NAMES: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
/// Longest daylight-saving gap we step over when a window starts inside one (the real maximum
/// is 60 minutes; 3 hours leaves room for historical double summer time).
const MAX_DST_GAP_MINUTES: i64 = 180;

/// A compiled `inbound_config`: zone, minute window and weekday mask. `Copy`, 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    tz: Tz,
    start: u16,
    end: u16,
    /// Bit `d` set = weekday `d` allowed (0 = Monday).
    days: u8,
}

impl Schedule {
    /// Validates and compiles a schedule. The admin API calls this to reject bad `HH:MM`, day
    /// names or zones before anything is stored; the routing table calls it at write time so a
    /// lookup only does integer arithmetic plus one zone-offset lookup.
    pub fn compile(cfg: &InboundConfig) -> Result<Self, RoutingError> {
        let tz = cfg
            .timezone
            .parse::<Tz>()
            .map_err(|_| RoutingError::UnknownTimezone {
                timezone: cfg.timezone.clone(),
            })?;
        let start =
            parse_hh_mm(&cfg.start_time, false).ok_or_else(|| RoutingError::InvalidTime {
                field: "start_time",
                value: cfg.start_time.clone(),
            })?;
        let end = parse_hh_mm(&cfg.end_time, true).ok_or_else(|| RoutingError::InvalidTime {
            field: "end_time",
            value: cfg.end_time.clone(),
        })?;
        let mut days = 0u8;
        for name in &cfg.allowed_days {
            let index = DAY_NAMES
                .iter()
                .position(|day| day.eq_ignore_ascii_case(name.trim()))
                .ok_or_else(|| RoutingError::UnknownDay { day: name.clone() })?;
            days |= 1 << index;
        }
        if days == 0 {
            // A schedule that never opens is a paused deployment in disguise; say so instead.
            return Err(RoutingError::NoAllowedDays);
        }
        // 00:00–24:00 is the same thing as start == end: normalise so Display and equality agree.
        let (start, end) = if start == 0 && end == MINUTES_PER_DAY {
            (0, 0)
        } else {
            (start, end)
        };
        Ok(Self {
            tz,
            start,
            end,
            days,
        })
    }

    /// Is `now` inside the window? Called on every routed call.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        let offset = self
            .tz
            .offset_from_utc_datetime(&now.naive_utc())
            .fix()
            .local_minus_utc();
        let local = now.timestamp() + i64::from(offset);
        let day = local.div_euclid(SECONDS_PER_DAY);
        let minute = (local.rem_euclid(SECONDS_PER_DAY) / 60) as u16;
        let weekday = (day + EPOCH_WEEKDAY).rem_euclid(7) as u8;
        self.open_at(weekday, minute)
    }

    fn allows(&self, weekday: u8) -> bool {
        self.days & (1 << weekday) != 0
    }

    fn open_at(&self, weekday: u8, minute: u16) -> bool {
        if self.start == self.end {
            self.allows(weekday)
        } else if self.start < self.end {
            self.allows(weekday) && self.start <= minute && minute < self.end
        } else {
            // Overnight: the evening part belongs to today, the early-morning part to yesterday.
            (minute >= self.start && self.allows(weekday))
                || (minute < self.end && self.allows((weekday + 6) % 7))
        }
    }

    /// The first instant at or after `now` at which the window is open, used for the
    /// `Retry-After` of an out-of-hours rejection (only on the reject path).
    pub fn next_open(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_open(now) {
            return Some(now);
        }
        let today = now.with_timezone(&self.tz).date_naive();
        let start_time =
            NaiveTime::from_hms_opt(u32::from(self.start / 60), u32::from(self.start % 60), 0)?;
        // A window opens at its start on an allowed day; 8 days covers a one-day-a-week schedule.
        (0..=8)
            .filter_map(|offset| today.checked_add_signed(Duration::days(offset)))
            .filter_map(|date: NaiveDate| self.first_instant_at_or_after(date.and_time(start_time)))
            .find(|&candidate| candidate > now && self.is_open(candidate))
    }

    /// Maps a local wall-clock time to UTC; inside a DST gap, the instant the clocks jump.
    fn first_instant_at_or_after(&self, local: chrono::NaiveDateTime) -> Option<DateTime<Utc>> {
        (0..=MAX_DST_GAP_MINUTES).find_map(|minutes| {
            let shifted = local.checked_add_signed(Duration::minutes(minutes))?;
            self.tz
                .from_local_datetime(&shifted)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
        })
    }

    /// The IANA zone the schedule is evaluated in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Window start and (exclusive) end as minutes after local midnight; equal = whole day.
    pub fn window_minutes(&self) -> (u16, u16) {
        (self.start, self.end)
    }

    /// The allowed day names, Monday first.
    pub fn allowed_days(&self) -> impl Iterator<Item = &'static str> + '_ {
        DAY_NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.allows(*i as u8))
            .map(|(_, name)| *name)
    }
}

/// `"09:00-18:00 Mon,Tue,Wed,Thu,Fri Asia/Kolkata"`, for operator-facing explanations.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            f.write_str("all day")?;
        } else {
            write!(
                f,
                "{:02}:{:02}-{:02}:{:02}",
                self.start / 60,
                self.start % 60,
                self.end / 60,
                self.end % 60
            )?;
        }
        let mut sep = " ";
        for day in self.allowed_days() {
            write!(f, "{sep}{}", &day[..3])?;
            sep = ",";
        }
        write!(f, " {}", self.tz.name())
    }
}

/// `"HH:MM"`, 24-hour; `"24:00"` only where `allow_end_of_day`.
fn parse_hh_mm(value: &str, allow_end_of_day: bool) -> Option<u16> {
    let bytes = value.as_bytes();
    if bytes.len() != 5 || bytes[2] != b':' {
        return None;
    }
    let two = |a: u8, b: u8| -> Option<u16> {
        (a.is_ascii_digit() && b.is_ascii_digit())
            .then(|| u16::from(a - b'0') * 10 + u16::from(b - b'0'))
    };
    let hours = two(bytes[0], bytes[1])?;
    let minutes = two(bytes[3], bytes[4])?;
    match (hours, minutes) {
        (24, 0) if allow_end_of_day => Some(MINUTES_PER_DAY),
        (0..=23, 0..=59) => Some(hours * 60 + minutes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(start: &str, end: &str, days: &[&str], tz: &str) -> InboundConfig {
        InboundConfig {
            start_time: start.into(),
            end_time: end.into(),
            allowed_days: days.iter().map(|d| d.to_string()).collect(),
            timezone: tz.into(),
        }
    }

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    const WEEKDAYS: &[&str] = &["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"];

    #[test]
    fn business_hours_in_kolkata_with_exclusive_end() {
        let s = Schedule::compile(&cfg("09:00", "18:00", WEEKDAYS, "Asia/Kolkata")).unwrap();
        // 2026-03-02 is a Monday. Kolkata is UTC+05:30.
        assert!(!s.is_open(at("2026-03-02T03:29:59Z")), "08:59:59 local");
        assert!(
            s.is_open(at("2026-03-02T03:30:00Z")),
            "09:00 local, start inclusive"
        );
        assert!(s.is_open(at("2026-03-02T12:29:59Z")), "17:59:59 local");
        assert!(
            !s.is_open(at("2026-03-02T12:30:00Z")),
            "18:00 local, end exclusive"
        );
        assert!(
            !s.is_open(at("2026-03-07T05:00:00Z")),
            "Saturday 10:30 local"
        );
    }

    #[test]
    fn allowed_days_are_evaluated_in_the_deployment_zone() {
        // Monday 01:00 in Kolkata is still Sunday 19:30 UTC.
        let s = Schedule::compile(&cfg("00:00", "06:00", &["Monday"], "Asia/Kolkata")).unwrap();
        assert!(s.is_open(at("2026-03-01T19:30:00Z")));
        // Sunday 23:00 in Los Angeles is already Monday 07:00 UTC: not Monday locally.
        let la =
            Schedule::compile(&cfg("09:00", "23:30", &["Sunday"], "America/Los_Angeles")).unwrap();
        assert!(la.is_open(at("2026-03-02T07:00:00Z")));
        let la_monday =
            Schedule::compile(&cfg("00:00", "23:30", &["Monday"], "America/Los_Angeles")).unwrap();
        assert!(!la_monday.is_open(at("2026-03-02T07:00:00Z")));
    }

    #[test]
    fn overnight_window_belongs_to_the_day_it_started() {
        // Friday only, 22:00–06:00 in London (UTC+0 in January). 2026-01-09 is a Friday.
        let s = Schedule::compile(&cfg("22:00", "06:00", &["Friday"], "Europe/London")).unwrap();
        assert!(!s.is_open(at("2026-01-09T21:59:00Z")));
        assert!(s.is_open(at("2026-01-09T22:00:00Z")), "Friday evening");
        assert!(
            s.is_open(at("2026-01-10T05:59:00Z")),
            "Saturday early morning, started Friday"
        );
        assert!(!s.is_open(at("2026-01-10T06:00:00Z")), "end exclusive");
        assert!(
            !s.is_open(at("2026-01-10T22:30:00Z")),
            "Saturday evening: Saturday not allowed"
        );
        assert!(
            !s.is_open(at("2026-01-09T01:00:00Z")),
            "Friday early morning belongs to Thursday"
        );
    }

    #[test]
    fn equal_start_and_end_means_all_day() {
        let s = Schedule::compile(&cfg("00:00", "00:00", &["Saturday", "Sunday"], "UTC")).unwrap();
        assert!(s.is_open(at("2026-01-10T00:00:00Z")));
        assert!(s.is_open(at("2026-01-11T23:59:59Z")));
        assert!(!s.is_open(at("2026-01-12T00:00:00Z")), "Monday");
        let odd = Schedule::compile(&cfg("13:15", "13:15", &["Monday"], "UTC")).unwrap();
        assert!(odd.is_open(at("2026-01-12T00:00:00Z")));
        let end_of_day = Schedule::compile(&cfg("00:00", "24:00", &["Monday"], "UTC")).unwrap();
        assert_eq!(
            end_of_day,
            Schedule::compile(&cfg("00:00", "00:00", &["monday"], "UTC")).unwrap()
        );
        let evening = Schedule::compile(&cfg("20:00", "24:00", &["Monday"], "UTC")).unwrap();
        assert!(evening.is_open(at("2026-01-12T23:59:00Z")));
        assert!(!evening.is_open(at("2026-01-13T00:00:00Z")));
    }

    #[test]
    fn new_york_spring_forward_skips_the_missing_hour() {
        // 2026-03-08 02:00 EST jumps to 03:00 EDT (07:00 UTC). Sunday.
        let s = Schedule::compile(&cfg("02:00", "03:00", &["Sunday"], "America/New_York")).unwrap();
        assert!(!s.is_open(at("2026-03-08T06:59:00Z")), "01:59 EST");
        assert!(
            !s.is_open(at("2026-03-08T07:00:00Z")),
            "03:00 EDT: the 02:xx hour never happened"
        );
        let wide =
            Schedule::compile(&cfg("01:00", "04:00", &["Sunday"], "America/New_York")).unwrap();
        assert!(wide.is_open(at("2026-03-08T06:00:00Z")), "01:00 EST");
        assert!(wide.is_open(at("2026-03-08T07:30:00Z")), "03:30 EDT");
        assert!(
            !wide.is_open(at("2026-03-08T08:00:00Z")),
            "04:00 EDT: two real hours after opening"
        );
        // The window starting inside the gap next opens when the clocks jump, a week later.
        assert_eq!(
            s.next_open(at("2026-03-08T06:00:00Z")),
            Some(at("2026-03-15T06:00:00Z"))
        );
        let gap_start =
            Schedule::compile(&cfg("02:30", "05:00", &["Sunday"], "America/New_York")).unwrap();
        assert_eq!(
            gap_start.next_open(at("2026-03-08T06:00:00Z")),
            Some(at("2026-03-08T07:00:00Z"))
        );
    }

    #[test]
    fn new_york_fall_back_repeats_the_hour_inside_the_window() {
        // 2026-11-01 02:00 EDT falls back to 01:00 EST. 01:30 local happens at 05:30 and 06:30 UTC.
        let s = Schedule::compile(&cfg("01:00", "02:00", &["Sunday"], "America/New_York")).unwrap();
        assert!(s.is_open(at("2026-11-01T05:30:00Z")), "01:30 EDT");
        assert!(s.is_open(at("2026-11-01T06:30:00Z")), "01:30 EST");
        assert!(!s.is_open(at("2026-11-01T07:00:00Z")), "02:00 EST");
    }

    #[test]
    fn london_summer_time_shifts_the_utc_window() {
        let s = Schedule::compile(&cfg("09:00", "17:00", WEEKDAYS, "Europe/London")).unwrap();
        // Winter: 09:00 GMT = 09:00 UTC. Summer: 09:00 BST = 08:00 UTC.
        assert!(!s.is_open(at("2026-01-12T08:30:00Z")));
        assert!(s.is_open(at("2026-07-13T08:30:00Z")));
        assert!(!s.is_open(at("2026-07-13T16:00:00Z")), "17:00 BST");
        // 2026-03-29 01:00 GMT -> 02:00 BST; an overnight Saturday window ending 03:00 closes
        // at 02:00 UTC (03:00 BST), one real hour earlier than the night before.
        let night =
            Schedule::compile(&cfg("22:00", "03:00", &["Saturday"], "Europe/London")).unwrap();
        assert!(night.is_open(at("2026-03-29T01:30:00Z")), "02:30 BST");
        assert!(!night.is_open(at("2026-03-29T02:00:00Z")), "03:00 BST");
    }

    #[test]
    fn next_open_finds_the_coming_window() {
        let s = Schedule::compile(&cfg("09:00", "18:00", WEEKDAYS, "Asia/Kolkata")).unwrap();
        // Saturday 2026-03-07 10:00 local -> Monday 09:00 local = 03:30 UTC.
        assert_eq!(
            s.next_open(at("2026-03-07T04:30:00Z")),
            Some(at("2026-03-09T03:30:00Z"))
        );
        let open = at("2026-03-09T04:00:00Z");
        assert_eq!(s.next_open(open), Some(open));
        let night = Schedule::compile(&cfg("22:00", "06:00", &["Friday"], "UTC")).unwrap();
        assert_eq!(
            night.next_open(at("2026-01-10T07:00:00Z")),
            Some(at("2026-01-16T22:00:00Z"))
        );
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            cfg("9:00", "18:00", WEEKDAYS, "UTC"),
            cfg("24:00", "18:00", WEEKDAYS, "UTC"),
            cfg("09:60", "18:00", WEEKDAYS, "UTC"),
            cfg("09:00", "25:00", WEEKDAYS, "UTC"),
            cfg("09:00", "18:00 ", WEEKDAYS, "UTC"),
        ];
        for c in &bad {
            assert!(
                matches!(Schedule::compile(c), Err(RoutingError::InvalidTime { .. })),
                "{c:?}"
            );
        }
        assert!(matches!(
            Schedule::compile(&cfg("09:00", "18:00", &["Funday"], "UTC")),
            Err(RoutingError::UnknownDay { day }) if day == "Funday"
        ));
        assert!(matches!(
            Schedule::compile(&cfg("09:00", "18:00", &[], "UTC")),
            Err(RoutingError::NoAllowedDays)
        ));
        assert!(matches!(
            Schedule::compile(&cfg("09:00", "18:00", WEEKDAYS, "Asia/Bangalore")),
            Err(RoutingError::UnknownTimezone { .. })
        ));
    }

    #[test]
    fn display_is_operator_readable() {
        let s = Schedule::compile(&cfg("09:00", "18:00", WEEKDAYS, "Asia/Kolkata")).unwrap();
        assert_eq!(
            s.to_string(),
            "09:00-18:00 Mon,Tue,Wed,Thu,Fri Asia/Kolkata"
        );
    }
}
