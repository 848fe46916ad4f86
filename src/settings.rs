//! The settings the supervisor reads from its environment at every turn of
//! its loop (`ENABLE_AUTO_RESTART`, `AUTO_RESTART_INTERVAL`,
//! `KILL_OLD_DELAY`), with Perl's notion of truth and of numbers, because
//! that is how operators have been writing them into envdirs.

use std::time::Duration;

use crate::envdir::Env;

/// A number of seconds, with the text it was read from (log lines print
/// the text, as the reference does).
#[derive(Debug, Clone, PartialEq)]
pub struct Seconds {
    pub text: String,
    pub value: f64,
}

impl Seconds {
    fn from_text(text: &str) -> Seconds {
        Seconds {
            text: text.to_string(),
            value: perl_number(text),
        }
    }

    /// The value as a duration, capped at a century: longer is "never",
    /// and adding it to an `Instant` must not overflow.
    pub fn duration(&self) -> Duration {
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        Duration::try_from_secs_f64(self.value.max(0.0)).map_or(CENTURY, |d| d.min(CENTURY))
    }
}

/// What the loop does this turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The auto-restart period, when auto-restart is on.
    pub auto_restart: Option<Seconds>,
    pub kill_old_delay: Seconds,
}

/// Perl truth: unset, empty and `0` are false.
pub fn truthy(value: Option<&str>) -> bool {
    !matches!(value, None | Some("") | Some("0"))
}

/// Perl's numeric value of a string: its longest numeric prefix after
/// leading white space, 0 when there is none (`"5s"` is 5, `"abc"` 0).
pub fn perl_number(text: &str) -> f64 {
    let s = text.trim_start();
    let bytes = s.as_bytes();
    let mut end = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        end = 1;
    }
    let digits = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let int = digits(end);
    end += int;
    let mut frac = 0;
    if bytes.get(end) == Some(&b'.') {
        frac = digits(end + 1);
        if int + frac > 0 {
            end += 1 + frac;
        }
    }
    if int + frac == 0 {
        return 0.0;
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let mut exp_end = end + 1;
        if matches!(bytes.get(exp_end), Some(b'+' | b'-')) {
            exp_end += 1;
        }
        let exp_digits = digits(exp_end);
        if exp_digits > 0 {
            end = exp_end + exp_digits;
        }
    }
    s[..end].parse().unwrap_or(0.0)
}

/// Reads the settings. `AUTO_RESTART_INTERVAL` defaults to 360 and
/// `KILL_OLD_DELAY` to 5 when auto-restart is on, else 0.
pub fn read(env: &Env) -> Settings {
    let auto_on = truthy(env.get_str("ENABLE_AUTO_RESTART").as_deref());
    let auto_restart = auto_on.then(|| match env.get_str("AUTO_RESTART_INTERVAL") {
        Some(text) if truthy(Some(&text)) => Seconds::from_text(&text),
        _ => Seconds::from_text("360"),
    });
    let kill_old_delay = match env.get_str("KILL_OLD_DELAY") {
        Some(text) => Seconds::from_text(&text),
        None if auto_on => Seconds::from_text("5"),
        None => Seconds::from_text("0"),
    };
    Settings {
        auto_restart,
        kill_old_delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perl_numbers() {
        for (text, n) in [
            ("5", 5.0),
            (" 5", 5.0),
            ("5s", 5.0),
            ("+3", 3.0),
            ("-2", -2.0),
            ("0.5", 0.5),
            (".5", 0.5),
            ("1e1", 10.0),
            ("1e", 1.0),
            ("abc", 0.0),
            ("", 0.0),
            (".", 0.0),
            ("-", 0.0),
        ] {
            assert_eq!(perl_number(text), n, "{text:?}");
        }
    }

    #[test]
    fn defaults_follow_auto_restart() {
        let mut env = Env::default();
        assert_eq!(read(&env).auto_restart, None);
        assert_eq!(read(&env).kill_old_delay.value, 0.0);
        env.set("ENABLE_AUTO_RESTART", "0");
        assert_eq!(read(&env).auto_restart, None);
        env.set("ENABLE_AUTO_RESTART", "1");
        let s = read(&env);
        assert_eq!(s.auto_restart.map(|a| a.text), Some("360".to_string()));
        assert_eq!(s.kill_old_delay.text, "5");
        env.set("AUTO_RESTART_INTERVAL", "0");
        assert_eq!(read(&env).auto_restart.map(|a| a.value), Some(360.0));
        env.set("AUTO_RESTART_INTERVAL", "2");
        env.set("KILL_OLD_DELAY", "");
        let s = read(&env);
        assert_eq!(s.auto_restart.map(|a| a.value), Some(2.0));
        assert_eq!(s.kill_old_delay.value, 0.0);
    }
}
