//! A work queue of object keys: each key at most once, due now or after a delay.

use std::collections::{BTreeSet, HashMap};

use capstan_model::ObjectKey;
use tokio::time::Instant;

/// Keys waiting to be reconciled, each with the earliest time it is due.
#[derive(Default)]
pub struct WorkQueue {
    due: HashMap<ObjectKey, Instant>,
    order: BTreeSet<(Instant, ObjectKey)>,
}

impl WorkQueue {
    /// Schedules `key` at `at`, or sooner if it is already scheduled sooner.
    pub fn add_at(&mut self, key: ObjectKey, at: Instant) {
        if let Some(existing) = self.due.get(&key) {
            if *existing <= at {
                return;
            }
            self.order.remove(&(*existing, key.clone()));
        }
        self.due.insert(key.clone(), at);
        self.order.insert((at, key));
    }

    /// Schedules `key` now.
    pub fn add(&mut self, key: ObjectKey) {
        self.add_at(key, Instant::now());
    }

    /// When the next key is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.order.first().map(|(t, _)| *t)
    }

    /// Takes the earliest key due by `now`, if any.
    pub fn pop_next_due(&mut self, now: Instant) -> Option<ObjectKey> {
        let (t, _) = self.order.first()?;
        if *t > now {
            return None;
        }
        let (_, k) = self.order.pop_first()?;
        self.due.remove(&k);
        Some(k)
    }

    pub fn len(&self) -> usize {
        self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dedupes_and_keeps_the_earliest() {
        let mut q = WorkQueue::default();
        let k = ObjectKey::new("App", "default", "a");
        let now = Instant::now();
        q.add_at(k.clone(), now + Duration::from_secs(10));
        q.add_at(k.clone(), now + Duration::from_secs(2));
        q.add_at(k.clone(), now + Duration::from_secs(5));
        assert_eq!(q.len(), 1);
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(2)));
        assert_eq!(q.pop_next_due(now), None);
        assert_eq!(q.pop_next_due(now + Duration::from_secs(3)), Some(k.clone()));
        assert!(q.is_empty());
        let j = ObjectKey::new("App", "default", "j");
        q.add_at(j.clone(), now + Duration::from_secs(1));
        q.add_at(k.clone(), now);
        assert_eq!(q.pop_next_due(now), Some(k));
        assert_eq!(q.pop_next_due(now), None, "j is not due yet");
        assert_eq!(q.pop_next_due(now + Duration::from_secs(1)), Some(j));
    }
}
