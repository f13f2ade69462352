//! The verified segments a node holds, in a bounded window, shared with the HTTP server.
//!
//! Only [`VerifiedSegment`]s get in, so everything served from here — to a player
//! or a peer — has passed the stream key's signature and digest checks.

use crate::playlist::{self, PlaylistConfig, SegmentInfo};
use crate::stream::VerifiedSegment;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// A window of verified segments, keyed by number.
#[derive(Debug)]
pub struct Store {
    /// Each held segment with the moment it arrived here (for latency figures).
    segments: BTreeMap<u64, (VerifiedSegment, Instant)>,
    /// Most segments held; older ones are dropped (PPSPP's live discard window).
    capacity: usize,
    /// The broadcaster ended the stream after this segment.
    ended: Option<u64>,
}

/// A store shared between the node's tasks and the HTTP server.
pub type SharedStore = Arc<Mutex<Store>>;

impl Store {
    /// An empty store holding at most `capacity` segments.
    pub fn new(capacity: usize) -> Store {
        Store {
            segments: BTreeMap::new(),
            capacity: capacity.max(1),
            ended: None,
        }
    }

    /// A new shared store.
    pub fn shared(capacity: usize) -> SharedStore {
        Arc::new(Mutex::new(Store::new(capacity)))
    }

    /// Adds a segment; false if it was already held or is older than the window.
    pub fn insert(&mut self, seg: VerifiedSegment) -> bool {
        self.insert_at(seg, crate::clock::now())
    }

    /// Adds a segment that arrived at `now`; false if already held or older than the window.
    pub fn insert_at(&mut self, seg: VerifiedSegment, now: Instant) -> bool {
        let n = seg.number();
        if self.segments.contains_key(&n) {
            return false;
        }
        if self.segments.len() >= self.capacity
            && self.segments.first_key_value().is_some_and(|(k, _)| n < *k)
        {
            return false;
        }
        self.segments.insert(n, (seg, now));
        while self.segments.len() > self.capacity {
            self.segments.pop_first();
        }
        true
    }

    /// When segment `n` arrived, if held.
    pub fn arrival(&self, n: u64) -> Option<Instant> {
        self.segments.get(&n).map(|(_, t)| *t)
    }

    /// Segment `n`, if held.
    pub fn get(&self, n: u64) -> Option<&VerifiedSegment> {
        self.segments.get(&n).map(|(s, _)| s)
    }

    /// Whether segment `n` is held.
    pub fn contains(&self, n: u64) -> bool {
        self.segments.contains_key(&n)
    }

    /// The newest segment number held.
    pub fn newest(&self) -> Option<u64> {
        self.segments.last_key_value().map(|(k, _)| *k)
    }

    /// Number of segments held.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Marks the stream ended after `last`.
    pub fn set_ended(&mut self, last: u64) {
        self.ended = Some(last);
    }

    /// The last segment, once the stream ended.
    pub fn ended(&self) -> Option<u64> {
        self.ended
    }

    /// The numbers held, ascending.
    pub fn numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.segments.keys().copied()
    }

    /// The live playlist for this store's contents.
    pub fn playlist(&self, config: PlaylistConfig) -> Option<String> {
        self.playlist_at(config, None)
    }

    /// The live playlist with its edge `config.delay` behind `live_newest`, the newest
    /// segment known to exist, rather than behind the newest held here: a viewer that
    /// just joined lists its first segment as soon as it holds it, instead of after
    /// fetching the whole hold-back.
    pub fn playlist_at(&self, config: PlaylistConfig, live_newest: Option<u64>) -> Option<String> {
        self.playlist_keeping(config, live_newest, None)
            .map(|(text, _)| text)
    }

    /// [`Store::playlist_at`] starting no later than segment `keep_from`
    /// ([`playlist::live_playlist_keeping`]), with the last segment number it lists.
    pub fn playlist_keeping(
        &self,
        config: PlaylistConfig,
        live_newest: Option<u64>,
        keep_from: Option<u64>,
    ) -> Option<(String, u64)> {
        self.playlist_listing(config, live_newest, keep_from, BTreeMap::new())
    }

    /// [`Store::playlist_keeping`] listing `arriving` too, as if held: segments not whole yet
    /// whose first verified bytes a player can already be given (cut-through).
    pub fn playlist_listing(
        &self,
        config: PlaylistConfig,
        live_newest: Option<u64>,
        keep_from: Option<u64>,
        arriving: BTreeMap<u64, SegmentInfo>,
    ) -> Option<(String, u64)> {
        let mut infos = arriving;
        let newest = self.newest().max(infos.last_key_value().map(|(n, _)| *n));
        let config = match (live_newest, newest) {
            (Some(live), Some(held)) if live > held => PlaylistConfig {
                delay: config.delay.saturating_sub(live - held),
                ..config
            },
            _ => config,
        };
        infos.extend(self.infos());
        // The stream counts as ended for the player once the last segment is here.
        let ended = self.ended.is_some_and(|last| self.newest() >= Some(last));
        let listed = playlist::listed_range_keeping(&infos, config, ended, keep_from)?;
        let text = playlist::live_playlist_keeping(&infos, config, ended, keep_from)?;
        Some((text, *listed.end()))
    }
}

impl Store {
    /// What the playlist needs of each held segment, by number.
    pub fn infos(&self) -> impl Iterator<Item = (u64, SegmentInfo)> + '_ {
        self.segments.iter().map(|(n, (s, _))| {
            let h = &s.header.header;
            (
                *n,
                SegmentInfo {
                    duration: std::time::Duration::from_millis(h.duration_ms as u64),
                    published_unix_ms: h.published_unix_ms,
                    discontinuity: h.discontinuity,
                },
            )
        })
    }
}

/// Locks a shared store; a poisoned lock (a panicked holder) still yields the data,
/// which is only ever mutated by whole-segment inserts.
pub fn lock(store: &SharedStore) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{node_id, sign_segment};
    use bytes::Bytes;
    use ed25519_dalek::SigningKey;

    fn seg(key: &SigningKey, n: u64) -> VerifiedSegment {
        let data = Bytes::from(vec![n as u8; 100]);
        let h = sign_segment(key, n, 2000, 0, false, &data).unwrap();
        VerifiedSegment::verify(&node_id(key), h, data).unwrap()
    }

    #[test]
    fn window_keeps_the_newest() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut s = Store::new(3);
        for n in [5, 6, 7, 8] {
            assert!(s.insert(seg(&key, n)));
        }
        assert!(!s.insert(seg(&key, 8)), "duplicate");
        assert!(!s.insert(seg(&key, 2)), "older than the window");
        assert_eq!(s.numbers().collect::<Vec<_>>(), vec![6, 7, 8]);
        assert_eq!(
            s.get(7).map(|v| v.data.clone()),
            Some(Bytes::from(vec![7u8; 100]))
        );
    }

    #[test]
    fn live_edge_follows_the_newest_known_segment() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut s = Store::new(16);
        // Joined at 10 with a hold-back of 3 while the stream is at 13: only 10 is here.
        s.insert(seg(&key, 10));
        let cfg = PlaylistConfig {
            delay: 3,
            window: 8,
        };
        assert!(
            s.playlist(cfg).is_none(),
            "edge behind the newest held: nothing"
        );
        let listed = s.playlist_at(cfg, Some(13)).expect("playable");
        assert!(listed.contains("seg/10.ts"), "{listed}");
        // Known newest 14: the edge is 11, and 10 is still listed.
        assert!(s.playlist_at(cfg, Some(14)).is_some());
        // Known newest 12: the edge is 9, before anything held.
        assert!(s.playlist_at(cfg, Some(12)).is_none());
    }

    #[test]
    fn a_segment_still_arriving_is_listed_as_if_held() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut s = Store::new(16);
        for n in [4, 5] {
            s.insert(seg(&key, n));
        }
        let cfg = PlaylistConfig {
            delay: 0,
            window: 2,
        };
        let arriving = |n: u64| {
            BTreeMap::from([(
                n,
                SegmentInfo {
                    duration: std::time::Duration::from_millis(1500),
                    published_unix_ms: 0,
                    discontinuity: false,
                },
            )])
        };
        let (text, last) = s.playlist_listing(cfg, Some(6), None, arriving(6)).unwrap();
        assert_eq!(last, 6);
        assert!(
            text.contains("seg/5.ts") && text.contains("#EXTINF:1.5,\nseg/6.ts"),
            "{text}"
        );
        assert!(!text.contains("seg/4.ts"), "{text}");
        // Not after a gap: 7 arriving while 6 is missing ends the list at 5.
        let (text, last) = s.playlist_listing(cfg, Some(7), None, arriving(7)).unwrap();
        assert_eq!(last, 5, "{text}");
    }
}
