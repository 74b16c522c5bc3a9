//! Servers left out of read routing for a while after they failed a connect or a query.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::config::HostAddr;

/// Hosts and when their ban ends. Time is passed in, so the rules are testable.
#[derive(Debug, Default)]
pub struct Bans {
    until: Mutex<HashMap<HostAddr, Instant>>,
    /// Whether `until` may hold a ban: routing asks for every read, and mostly none is.
    any: AtomicBool,
}

impl Bans {
    pub fn ban(&self, host: &HostAddr, until: Instant) {
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(host.clone()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
        self.any.store(true, Ordering::Release);
    }

    pub fn is_banned(&self, host: &HostAddr, now: Instant) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let banned = match map.get(host) {
            Some(&until) if now < until => true,
            Some(_) => {
                map.remove(host);
                false
            }
            None => false,
        };
        // Cleared under the lock `ban` sets it under, so a new ban is never missed.
        if map.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        banned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ban_lasts_until_its_end() {
        let bans = Bans::default();
        let host = HostAddr {
            host: "127.0.0.1".into(),
            port: 5433,
        };
        let now = Instant::now();
        assert!(!bans.is_banned(&host, now));
        bans.ban(&host, now + Duration::from_secs(30));
        assert!(bans.is_banned(&host, now + Duration::from_secs(29)));
        assert!(!bans.is_banned(&host, now + Duration::from_secs(31)));
        assert!(!bans.is_banned(&host, now), "expired ban is forgotten");
        bans.ban(&host, now + Duration::from_secs(5));
        bans.ban(&host, now + Duration::from_secs(1));
        assert!(
            bans.is_banned(&host, now + Duration::from_secs(3)),
            "a shorter ban never cuts a longer one"
        );
        let other = HostAddr {
            host: "127.0.0.1".into(),
            port: 5434,
        };
        bans.ban(&other, now + Duration::from_secs(60));
        assert!(!bans.is_banned(&host, now + Duration::from_secs(10)));
        assert!(
            bans.is_banned(&other, now + Duration::from_secs(10)),
            "one ban ending leaves the others"
        );
        assert!(!bans.is_banned(&other, now + Duration::from_secs(61)));
        bans.ban(&host, now + Duration::from_secs(90));
        assert!(bans.is_banned(&host, now + Duration::from_secs(62)));
    }
}
