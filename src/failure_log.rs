//! Which failing calls get their traceback logged.
//!
//! A host that feeds a bundle input it rejects can make every call fail. Formatting and
//! logging a full traceback per failure made such a burst ~60× slower than successful
//! calls and flooded the logger, so each bundle logs the full traceback of only the first
//! [`FailureLogPolicy::per_kind`] failures of a kind (exception type + raising location,
//! [`RaiseSite`]) per [`FailureLogPolicy::interval`], and at most
//! [`FailureLogPolicy::per_interval`] of all kinds; the others are counted, and one summary
//! line with the counts is logged when the interval is over (at the bundle's next failure)
//! or when the bundle is unloaded. The decision is made inside the job, before anything is
//! formatted (`contract.rs`). Metrics count every failure either way.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use interp_pool::RaiseSite;

/// How many failing calls per bundle get their traceback logged
/// ([`PythonConfig::failure_log`](crate::PythonConfig::failure_log)).
///
/// At most `per_interval` tracebacks plus one summary line per bundle and `interval`,
/// whatever the failure rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLogPolicy {
    /// The window the limits apply to. Default 10 s.
    pub interval: Duration,
    /// Full tracebacks per kind (exception type + raising file and line) and window.
    /// Default 3.
    pub per_kind: u32,
    /// Full tracebacks of all kinds per window. Default 20.
    pub per_interval: u32,
}

impl Default for FailureLogPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            per_kind: 3,
            per_interval: 20,
        }
    }
}

impl FailureLogPolicy {
    /// Every failure logged in full (the behaviour before rate limiting).
    pub fn unlimited() -> Self {
        Self {
            interval: Duration::from_secs(1),
            per_kind: u32::MAX,
            per_interval: u32::MAX,
        }
    }
}

/// What to do with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Format and log its traceback; `last` if further failures of its kind are counted
    /// instead until the window ends (said in the log line).
    Log { last: bool },
    /// Count it only.
    Count,
}

/// Distinct kinds remembered per window; further kinds share one "other kinds" count.
const MAX_KINDS: usize = 64;
/// Kinds named in one summary line.
const SUMMARY_KINDS: usize = 8;

/// One bundle's failure log state.
#[derive(Debug)]
pub(crate) struct FailureLog {
    policy: FailureLogPolicy,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    kinds: HashMap<RaiseSite, Kind>,
    /// Suppressed failures of kinds beyond `MAX_KINDS`.
    other: u64,
}

#[derive(Debug, Default)]
struct Kind {
    logged: u32,
    suppressed: u64,
}

impl Window {
    fn new(start: Instant) -> Self {
        Self {
            start,
            logged: 0,
            kinds: HashMap::new(),
            other: 0,
        }
    }

    /// The summary of what this window suppressed, if anything; resets it to `now`.
    fn roll(&mut self, now: Instant) -> Option<String> {
        let old = std::mem::replace(self, Window::new(now));
        let mut kinds: Vec<(RaiseSite, u64)> = old
            .kinds
            .into_iter()
            .filter(|(_, k)| k.suppressed > 0)
            .map(|(s, k)| (s, k.suppressed))
            .collect();
        let total: u64 = kinds.iter().map(|(_, n)| n).sum::<u64>() + old.other;
        if total == 0 {
            return None;
        }
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        let secs = now.duration_since(old.start).as_secs_f64();
        let mut line = format!("{total} more failed calls in the last {secs:.1} s, not logged:");
        for (site, n) in kinds.iter().take(SUMMARY_KINDS) {
            let _ = write!(line, "\n  {n} × {site}");
        }
        let rest: u64 = kinds
            .iter()
            .skip(SUMMARY_KINDS)
            .map(|(_, n)| n)
            .sum::<u64>()
            + old.other;
        if rest > 0 {
            let _ = write!(line, "\n  {rest} of other kinds");
        }
        Some(line)
    }
}

impl FailureLog {
    pub(crate) fn new(policy: FailureLogPolicy) -> Self {
        Self::starting_at(policy, Instant::now())
    }

    /// A log whose first window starts at `start` (tests give the clock's readings).
    fn starting_at(policy: FailureLogPolicy, start: Instant) -> Self {
        Self {
            policy,
            window: Mutex::new(Window::new(start)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides about one failure of kind `site`; also returns the summary of the previous
    /// window if this failure starts a new one.
    pub(crate) fn admit(&self, site: &RaiseSite) -> (Verdict, Option<String>) {
        self.admit_at(site, Instant::now())
    }

    /// [`admit`](Self::admit) at the clock reading `now`.
    fn admit_at(&self, site: &RaiseSite, now: Instant) -> (Verdict, Option<String>) {
        let mut guard = self.lock();
        let w = &mut *guard;
        let summary = if now.duration_since(w.start) >= self.policy.interval {
            w.roll(now)
        } else {
            None
        };
        let full = w.logged >= self.policy.per_interval;
        let known = w.kinds.len() < MAX_KINDS || w.kinds.contains_key(site);
        if !known {
            w.other += 1;
            return (Verdict::Count, summary);
        }
        if !w.kinds.contains_key(site) {
            w.kinds.insert(site.clone(), Kind::default());
        }
        let Some(kind) = w.kinds.get_mut(site) else {
            return (Verdict::Count, summary);
        };
        if full || kind.logged >= self.policy.per_kind {
            kind.suppressed += 1;
            return (Verdict::Count, summary);
        }
        kind.logged += 1;
        let last = kind.logged == self.policy.per_kind;
        w.logged += 1;
        let last = last || w.logged == self.policy.per_interval;
        (Verdict::Log { last }, summary)
    }

    /// The summary of what the current window suppressed so far (at unload).
    pub(crate) fn flush(&self) -> Option<String> {
        self.lock().roll(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(line: u32) -> RaiseSite {
        RaiseSite {
            type_name: "struct.error".into(),
            file: "glue.py".into(),
            line,
        }
    }

    #[test]
    fn logs_the_first_of_each_kind_then_counts() {
        let log = FailureLog::new(FailureLogPolicy {
            interval: Duration::from_secs(3600),
            per_kind: 2,
            per_interval: 3,
        });
        let v: Vec<Verdict> = (0..5).map(|_| log.admit(&site(1)).0).collect();
        assert_eq!(
            v,
            [
                Verdict::Log { last: false },
                Verdict::Log { last: true },
                Verdict::Count,
                Verdict::Count,
                Verdict::Count
            ]
        );
        // A second kind gets the one full slot left in the window.
        assert_eq!(log.admit(&site(2)).0, Verdict::Log { last: true });
        assert_eq!(log.admit(&site(3)).0, Verdict::Count);
        let summary = log.flush().expect("suppressed some");
        assert!(summary.starts_with("4 more failed calls"), "{summary}");
        assert!(
            summary.contains("3 × struct.error at glue.py:1"),
            "{summary}"
        );
        assert!(
            summary.contains("1 × struct.error at glue.py:3"),
            "{summary}"
        );
        assert_eq!(log.flush(), None);
    }

    #[test]
    fn a_new_window_starts_with_the_summary_of_the_old_one() {
        // Clock readings given, not slept for: a descheduled test cannot move the window.
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let policy = FailureLogPolicy {
            interval: Duration::from_millis(20),
            per_kind: 1,
            per_interval: 10,
        };
        let log = FailureLog::starting_at(policy, t0);
        let first = log.admit_at(&site(1), at(1));
        assert_eq!(first, (Verdict::Log { last: true }, None));
        assert_eq!(log.admit_at(&site(1), at(19)), (Verdict::Count, None));
        let (v, summary) = log.admit_at(&site(1), at(20));
        assert_eq!(v, Verdict::Log { last: true });
        assert!(summary.unwrap().starts_with("1 more failed calls"));
    }
}
