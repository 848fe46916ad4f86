//! Every number a run measured, kept per metric and per start_server, and
//! the statistics the report shows of them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::instance::Who;

/// One measurement. A capped one stopped at a time limit: the real value is
/// larger than `value`.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub value: f64,
    pub capped: bool,
}

#[derive(Debug, Default)]
pub struct Results {
    samples: BTreeMap<(String, Who), Vec<Sample>>,
    /// Text observations, the first one kept per key.
    notes: BTreeMap<(String, Who), String>,
    /// Measurements that could not be taken of an extra implementation
    /// (an option it does not take, a command it lacks), and why.
    not_applicable: BTreeMap<(String, Who), String>,
}

impl Results {
    pub fn add(&mut self, key: &str, who: Who, value: f64) {
        self.push(
            key,
            who,
            Sample {
                value,
                capped: false,
            },
        );
    }

    /// A measurement that hit its limit `cap` without an answer.
    pub fn add_capped(&mut self, key: &str, who: Who, cap: f64) {
        self.push(
            key,
            who,
            Sample {
                value: cap,
                capped: true,
            },
        );
    }

    fn push(&mut self, key: &str, who: Who, sample: Sample) {
        self.samples
            .entry((key.to_string(), who))
            .or_default()
            .push(sample);
    }

    /// Keeps `text` under `key` unless something is there already.
    pub fn note(&mut self, key: &str, who: Who, text: String) {
        self.notes.entry((key.to_string(), who)).or_insert(text);
    }

    /// Marks `keys` as not measurable for `who`, for `reason` (the first
    /// reason is kept).
    pub fn not_applicable(&mut self, keys: &[&str], who: Who, reason: &str) {
        for key in keys {
            self.not_applicable
                .entry((key.to_string(), who))
                .or_insert_with(|| reason.to_string());
        }
    }

    /// Why `key` could not be measured for `who`, if it was marked so and
    /// has no sample.
    pub fn why_not(&self, key: &str, who: Who) -> Option<&str> {
        if !self.get(key, who).is_empty() {
            return None;
        }
        self.not_applicable
            .get(&(key.to_string(), who))
            .map(String::as_str)
    }

    /// Every reason given for a measurement not taken, once per `who`.
    pub fn not_applicable_reasons(&self) -> Vec<(Who, &str)> {
        let mut reasons: Vec<(Who, &str)> = self
            .not_applicable
            .iter()
            .filter(|((key, who), _)| self.get(key, *who).is_empty())
            .map(|((_, who), reason)| (*who, reason.as_str()))
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        reasons
    }

    pub fn get_note(&self, key: &str, who: Who) -> Option<&str> {
        self.notes.get(&(key.to_string(), who)).map(String::as_str)
    }

    pub fn get(&self, key: &str, who: Who) -> &[Sample] {
        self.samples
            .get(&(key.to_string(), who))
            .map_or(&[], Vec::as_slice)
    }

    pub fn stats(&self, key: &str, who: Who) -> Option<Stats> {
        Stats::of(self.get(key, who))
    }

    /// `metric,who,run,value,capped` lines, for whoever wants the raw data.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("metric,who,run,value,capped\n");
        for ((key, who), samples) in &self.samples {
            for (run, s) in samples.iter().enumerate() {
                let _ = writeln!(out, "{key},{},{run},{},{}", who.name(), s.value, s.capped);
            }
        }
        out
    }
}

/// Median, extremes and total of some samples.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median: f64,
    /// The sample at (or next to) the median is capped.
    pub median_capped: bool,
    /// The 90th percentile (nearest rank).
    pub p90: f64,
    pub min: f64,
    pub max: f64,
    pub max_capped: bool,
    pub sum: f64,
    pub count: usize,
}

impl Stats {
    pub fn of(samples: &[Sample]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(|a, b| a.value.total_cmp(&b.value));
        let n = sorted.len();
        let (low, high) = (sorted[(n - 1) / 2], sorted[n / 2]);
        Some(Stats {
            median: (low.value + high.value) / 2.0,
            median_capped: low.capped || high.capped,
            p90: sorted[(n * 9).div_ceil(10).max(1) - 1].value,
            min: sorted[0].value,
            max: sorted[n - 1].value,
            max_capped: sorted.iter().any(|s| s.capped),
            sum: sorted.iter().map(|s| s.value).sum(),
            count: n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[f64]) -> Vec<Sample> {
        values
            .iter()
            .map(|&value| Sample {
                value,
                capped: false,
            })
            .collect()
    }

    #[test]
    fn median_min_max() {
        let s = Stats::of(&samples(&[5.0, 1.0, 3.0])).unwrap();
        assert_eq!((s.median, s.min, s.max, s.sum), (3.0, 1.0, 5.0, 9.0));
        let s = Stats::of(&samples(&[4.0, 1.0, 3.0, 2.0])).unwrap();
        assert_eq!(s.median, 2.5);
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(Stats::of(&samples(&twenty)).unwrap().p90, 18.0);
        assert_eq!(Stats::of(&samples(&[7.0])).unwrap().p90, 7.0);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn capped_median() {
        let mut v = samples(&[1.0]);
        v.push(Sample {
            value: 10.0,
            capped: true,
        });
        v.push(Sample {
            value: 10.0,
            capped: true,
        });
        let s = Stats::of(&v).unwrap();
        assert!(s.median_capped && s.max_capped);
        assert_eq!(s.median, 10.0);
    }
}
