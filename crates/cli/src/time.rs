//! How the CLI shows durations.

/// `42s`, `3m12s`, `5h3m`, `2d4h`.
pub(crate) fn human(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn human_durations() {
        assert_eq!(human(TimeDelta::seconds(-3)), "0s");
        assert_eq!(human(TimeDelta::seconds(59)), "59s");
        assert_eq!(human(TimeDelta::seconds(61)), "1m1s");
        assert_eq!(human(TimeDelta::seconds(7200)), "2h0m");
        assert_eq!(human(TimeDelta::seconds(90000)), "1d1h");
    }
}
