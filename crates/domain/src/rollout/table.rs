//! The target table: every target of a rollout stored once, each with two bytes of state,
//! in the order it was added (its index, which the client tokens use).
//!
//! Duplicates are found through a map from a 64-bit hash of the target to its index rather
//! than a set of targets, so a target's name is never held twice; the rare hash collision
//! falls back to a linear list. Only the entries are serialised: the map is rebuilt.

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{Target, TargetKind};

/// Where one target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TargetState {
    /// Not attempted yet.
    Queued,
    /// An attempt failed or timed out; the next one waits for its backoff.
    RetryWaiting,
    /// An attempt is launching (intent logged) or launched, not settled.
    InFlight,
    Succeeded,
    Failed,
    Rejected,
    TimedOut,
    Canceled,
    /// Outside the caller's `allowed_targets`: never attempted.
    SkippedUnauthorized,
}

impl TargetState {
    /// True once nothing more will happen to the target.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::RetryWaiting | Self::InFlight)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) target: Target,
    pub(crate) state: TargetState,
    /// The last attempt started (0: none); at most 11.
    pub(crate) attempt: u8,
    /// Whether any attempt was launched (an execution exists or existed).
    pub(crate) notified: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct TargetTable {
    pub(crate) entries: Vec<Entry>,
    index: HashMap<u64, u32>,
    /// Indexes whose hash was already taken by another target.
    collided: Vec<u32>,
}

fn hash(t: &Target) -> u64 {
    // FNV-1a over the kind and the id: stable, cheap, and no allocation.
    let kind = match t.kind {
        TargetKind::Thing => 1u8,
        TargetKind::Client => 2u8,
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(kind).chain(t.id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl TargetTable {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn find(&self, t: &Target) -> Option<u32> {
        let i = *self.index.get(&hash(t))?;
        if self.entries[i as usize].target == *t {
            return Some(i);
        }
        self.collided
            .iter()
            .copied()
            .find(|&i| self.entries[i as usize].target == *t)
    }

    /// Adds a target unless present; returns its new index.
    pub(crate) fn push(&mut self, target: Target, state: TargetState) -> Option<u32> {
        if self.find(&target).is_some() {
            return None;
        }
        let i = self.entries.len() as u32;
        let h = hash(&target);
        match self.index.entry(h) {
            Slot::Occupied(_) => self.collided.push(i),
            Slot::Vacant(slot) => {
                slot.insert(i);
            }
        }
        self.entries.push(Entry {
            target,
            state,
            attempt: 0,
            notified: false,
        });
        Some(i)
    }

    /// Heap bytes held beside the targets' own names (for the memory-bound test).
    #[cfg(test)]
    pub(crate) fn overhead_bytes(&self) -> usize {
        let buckets = (self.index.capacity() * 8).div_ceil(7).next_power_of_two();
        self.entries.capacity() * std::mem::size_of::<Entry>()
            - self.entries.len() * std::mem::size_of::<Target>()
            + buckets * (std::mem::size_of::<(u64, u32)>() + 1)
            + self.collided.capacity() * 4
    }
}

impl PartialEq for TargetTable {
    fn eq(&self, other: &Self) -> bool {
        // The index follows from the entries.
        self.entries == other.entries
    }
}

impl Serialize for TargetTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(s)
    }
}

impl<'de> Deserialize<'de> for TargetTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<Entry>::deserialize(d)?;
        let mut table = TargetTable::default();
        for e in entries {
            let (attempt, notified) = (e.attempt, e.notified);
            if let Some(i) = table.push(e.target, e.state) {
                let entry = &mut table.entries[i as usize];
                entry.attempt = attempt;
                entry.notified = notified;
            }
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_and_collisions_fall_back() {
        let mut t = TargetTable::default();
        let a = Target::thing("a").unwrap();
        assert_eq!(t.push(a.clone(), TargetState::Queued), Some(0));
        assert_eq!(t.push(a.clone(), TargetState::Queued), None);
        assert_eq!(
            t.push(Target::client("a").unwrap(), TargetState::Queued),
            Some(1)
        );
        // Force a collision: b's hash taken by a.
        let b = Target::thing("b").unwrap();
        t.index.insert(hash(&b), 0);
        t.entries.push(Entry {
            target: b.clone(),
            state: TargetState::Queued,
            attempt: 0,
            notified: false,
        });
        t.collided.push(2);
        assert_eq!((t.find(&a), t.find(&b)), (Some(0), Some(2)));
        assert_eq!(t.push(b.clone(), TargetState::Queued), None);
        let json = serde_json::to_string(&t).unwrap();
        let back: TargetTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.find(&Target::client("a").unwrap()), Some(1));
    }
}
