//! The shard function: `shard = hash(routing key) mod N`. Stable across versions and
//! platforms (FNV-1a, 64-bit), because shards are event-log partitions on disk.

/// FNV-1a over the key's bytes.
pub fn hash_key(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard (= log partition) that owns `key` among `shards` shards.
pub fn shard_of(key: &str, shards: u32) -> u32 {
    assert!(shards > 0, "shard count must be positive");
    (hash_key(key) % u64::from(shards)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values_never_change() {
        // Changing these would move every target to another partition on upgrade.
        assert_eq!(hash_key(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash_key("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            shard_of("thing/lab-1", 64),
            (hash_key("thing/lab-1") % 64) as u32
        );
    }

    #[test]
    fn keys_spread_over_shards() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[shard_of(&format!("thing/dev-{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    proptest! {
        #[test]
        fn shard_is_in_range_and_deterministic(key in ".*", n in 1u32..1024) {
            let s = shard_of(&key, n);
            prop_assert!(s < n);
            prop_assert_eq!(s, shard_of(&key, n));
        }
    }
}
