//! A worker busy for a long stretch hands its CPU to whatever else is runnable there, once per stretch.
//!
//! On a saturated machine two always-busy threads sharing one CPU take turns at the scheduler tick (4 ms with
//! `HZ=250`), and every request on the waiting thread waits that long: it showed as a p99 twice HAProxy's. A
//! worker that has run for [`DEFAULT_LIMIT`] without sleeping calls `sched_yield` at its next request, so whoever
//! shares its CPU (the other worker, a replica) waits about that long instead of a tick. Nothing changes while a
//! worker sleeps between bursts, which is the case whenever the machine has CPU to spare.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long a worker runs without sleeping before it yields once.
pub const DEFAULT_LIMIT: Duration = Duration::from_millis(1);
/// The environment variable that sets the limit in microseconds; `0` turns yielding off.
pub const LIMIT_ENV: &str = "CAPSTAN_LB_BUSY_YIELD_US";
/// A park shorter than this found events already waiting: the thread did not sleep.
const SLEPT: Duration = Duration::from_micros(30);

thread_local! {
    static LIMIT: Cell<Option<Duration>> = const { Cell::new(None) };
    static ON_CPU_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    static PARKED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The limit from the environment: unset means the default, `0` off; a bad value is reported and ignored.
pub fn limit_from_env() -> Option<Duration> {
    match std::env::var(LIMIT_ENV) {
        Err(_) => Some(DEFAULT_LIMIT),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(us) => Some(Duration::from_micros(us)),
            Err(_) => {
                tracing::warn!("{LIMIT_ENV}={v:?} is not a number of microseconds; using {DEFAULT_LIMIT:?}");
                Some(DEFAULT_LIMIT)
            }
        },
    }
}

/// Turns yielding on for the calling worker thread.
pub fn enable(limit: Option<Duration>) {
    LIMIT.with(|l| l.set(limit));
}

/// The runtime's park hook: the worker is about to wait for events.
pub fn parked() {
    PARKED_AT.with(|p| p.set(Some(Instant::now())));
}

/// The runtime's unpark hook: a park long enough to be a sleep starts a new busy stretch.
pub fn unparked() {
    let now = Instant::now();
    if slept(PARKED_AT.with(Cell::get), now) {
        ON_CPU_SINCE.with(|s| s.set(Some(now)));
    }
}

/// Called as a request starts on a worker; yields the CPU once if the worker has been busy past its limit.
pub fn request_starts(now: Instant) {
    let Some(limit) = LIMIT.with(Cell::get) else { return };
    ON_CPU_SINCE.with(|since| match since.get() {
        Some(t) if should_yield(t, now, limit) => {
            std::thread::yield_now();
            since.set(Some(Instant::now()));
        }
        Some(_) => {}
        None => since.set(Some(now)),
    });
}

fn slept(parked_at: Option<Instant>, now: Instant) -> bool {
    parked_at.is_some_and(|p| now.saturating_duration_since(p) > SLEPT)
}

fn should_yield(on_cpu_since: Instant, now: Instant, limit: Duration) -> bool {
    now.saturating_duration_since(on_cpu_since) > limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_only_after_the_limit() {
        let t = Instant::now();
        let ms = Duration::from_millis(1);
        assert!(!should_yield(t, t + Duration::from_micros(999), ms));
        assert!(should_yield(t, t + Duration::from_micros(1001), ms));
        // A clock read before the stretch began (another thread's Instant) never yields.
        assert!(!should_yield(t + ms, t, ms));
    }

    #[test]
    fn a_short_park_is_not_a_sleep() {
        let t = Instant::now();
        assert!(!slept(None, t));
        assert!(!slept(Some(t), t + Duration::from_micros(5)));
        assert!(slept(Some(t), t + Duration::from_micros(200)));
    }

    #[test]
    fn a_sleep_starts_a_new_stretch_and_a_yield_restarts_it() {
        enable(Some(Duration::from_millis(1)));
        let t = Instant::now();
        ON_CPU_SINCE.with(|s| s.set(Some(t)));
        // Busy for 5 ms: the request yields and the stretch starts again at the yield.
        request_starts(t + Duration::from_millis(5));
        let after_yield = ON_CPU_SINCE.with(Cell::get).expect("stretch");
        assert!(after_yield > t, "the yield restarted the stretch");
        // A long park is a sleep: the stretch restarts at the unpark.
        PARKED_AT.with(|p| p.set(Some(after_yield)));
        std::thread::sleep(Duration::from_millis(2));
        unparked();
        assert!(ON_CPU_SINCE.with(Cell::get).expect("stretch") > after_yield);
        // Turned off: requests leave the stretch alone.
        enable(None);
        let before = ON_CPU_SINCE.with(Cell::get);
        request_starts(Instant::now() + Duration::from_secs(1));
        assert_eq!(ON_CPU_SINCE.with(Cell::get), before);
    }
}
