//! Which endpoint a shard's events go to: weighted rendezvous hashing of the shard id.
//!
//! Owns the ranking of endpoints per shard. Each endpoint scores every shard with a hash of
//! (endpoint name, shard id) scaled by its weight; the ranking is the endpoints by score, so
//! the first is the home and the rest are the failover order. Adding or removing an endpoint
//! moves only the shards whose top choice changes. It knows nothing of endpoint health: the
//! caller skips endpoints whose circuit is open.

/// A ranking of endpoints (by index into the list given to `new`).
#[derive(Debug, Clone)]
pub struct Ring {
    /// Per endpoint: a hash seed from its name, and its weight.
    members: Vec<(u64, f64)>,
}

impl Ring {
    /// Builds a ring from `(name, weight)` pairs; the name, not the URL, is the identity, so an
    /// endpoint can change its URL without moving shards.
    pub fn new<'a>(endpoints: impl IntoIterator<Item = (&'a str, f64)>) -> Ring {
        let members = endpoints
            .into_iter()
            .map(|(name, weight)| (fnv1a(name.as_bytes()), weight))
            .collect();
        Ring { members }
    }

    fn score(&self, member: usize, key: u64) -> f64 {
        let (seed, weight) = self.members[member];
        let h = splitmix64(seed ^ splitmix64(key));
        // A uniform value in (0, 1) from the top 53 bits.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -weight / u.ln()
    }

    /// Endpoints for `key` (a shard id), best first.
    pub fn rank(&self, key: u64) -> Vec<usize> {
        let mut scored: Vec<(f64, usize)> = (0..self.members.len())
            .map(|m| (self.score(m, key), m))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().map(|(_, m)| m).collect()
    }

    /// The endpoint `rank(key)` puts first: the highest score, the lowest index among equals.
    pub fn home(&self, key: u64) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for m in 0..self.members.len() {
            let score = self.score(m, key);
            if best.is_none_or(|(top, _)| score.total_cmp(&top).is_gt()) {
                best = Some((score, m));
            }
        }
        best.map(|(_, m)| m)
    }

    /// The first endpoint for `key`, in `rank` order, that `usable` accepts. `usable` is asked
    /// in that order and not past the first yes (it may take a circuit's probe). Called for
    /// every request: the home is found without building the ranking, which is only built to
    /// fail over.
    pub fn pick(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let home = self.home(key)?;
        if usable(home) {
            return Some(home);
        }
        self.rank(key).into_iter().skip(1).find(|m| usable(*m))
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("endpoint-{i}")).collect()
    }

    fn ring(names: &[String], weights: &[f64]) -> Ring {
        Ring::new(
            names
                .iter()
                .map(String::as_str)
                .zip(weights.iter().copied()),
        )
    }

    fn homes(ring: &Ring, keys: u64) -> Vec<usize> {
        (0..keys).map(|k| ring.rank(k)[0]).collect()
    }

    #[test]
    fn a_thousand_shards_spread_evenly_over_ten_endpoints() {
        let names = names(10);
        let ring = ring(&names, &[1.0; 10]);
        let mut counts = [0usize; 10];
        for home in homes(&ring, 1000) {
            counts[home] += 1;
        }
        let max = *counts.iter().max().unwrap() as f64;
        assert!(max <= 1.35 * 100.0, "{counts:?}");
    }

    #[test]
    fn weights_are_honoured_within_ten_percent() {
        let names = names(4);
        let weights = [1.0, 2.0, 3.0, 4.0];
        let ring = ring(&names, &weights);
        let mut counts = [0usize; 4];
        for home in homes(&ring, 10_000) {
            counts[home] += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            let expected = 10_000.0 * w / 10.0;
            let got = counts[i] as f64;
            assert!(
                (got - expected).abs() <= 0.1 * expected,
                "endpoint {i}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_shards() {
        let names = names(10);
        let before = homes(&ring(&names, &[1.0; 10]), 1000);
        let fewer: Vec<String> = names
            .iter()
            .filter(|n| *n != "endpoint-3")
            .cloned()
            .collect();
        let after = homes(&ring(&fewer, &[1.0; 9]), 1000);
        for (k, (b, a)) in before.iter().zip(&after).enumerate() {
            if names[*b] != "endpoint-3" {
                assert_eq!(
                    names[*b], fewer[*a],
                    "shard {k} moved though its endpoint stayed"
                );
            }
        }
    }

    #[test]
    fn adding_an_endpoint_moves_about_one_in_k_plus_one() {
        let names = names(10);
        let before = homes(&ring(&names, &[1.0; 10]), 10_000);
        let more = self::names(11);
        let after = homes(&ring(&more, &[1.0; 11]), 10_000);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if names[*b] != more[*a] {
                assert_eq!(
                    more[*a], "endpoint-10",
                    "shards move only to the new endpoint"
                );
                moved += 1;
            }
        }
        let share = moved as f64 / 10_000.0;
        assert!((share - 1.0 / 11.0).abs() < 0.02, "moved {share}");
    }

    #[test]
    fn pick_fails_over_in_rank_order() {
        let names = names(3);
        let ring = ring(&names, &[1.0; 3]);
        let rank = ring.rank(42);
        assert_eq!(ring.pick(42, |_| true), Some(rank[0]));
        assert_eq!(ring.pick(42, |m| m != rank[0]), Some(rank[1]));
        assert_eq!(ring.pick(42, |_| false), None);
    }

    #[test]
    fn pick_asks_in_rank_order_and_stops_at_the_first_yes() {
        let names = names(4);
        let ring = ring(&names, &[1.0, 2.0, 1.0, 3.0]);
        for key in 0..200 {
            let rank = ring.rank(key);
            for mask in 0u32..16 {
                let asked = std::cell::RefCell::new(Vec::new());
                let picked = ring.pick(key, |m| {
                    asked.borrow_mut().push(m);
                    mask & (1 << m) != 0
                });
                let expected = rank.iter().position(|m| mask & (1 << m) != 0);
                assert_eq!(
                    picked,
                    expected.map(|i| rank[i]),
                    "key {key} mask {mask:04b}"
                );
                let until = expected.map_or(rank.len(), |i| i + 1);
                assert_eq!(*asked.borrow(), rank[..until], "key {key} mask {mask:04b}");
            }
        }
        assert_eq!(Ring::new([]).pick(1, |_| true), None);
    }

    #[test]
    fn picking_a_usable_home_allocates_nothing() {
        let names = names(3);
        let ring = ring(&names, &[1.0; 3]);
        let (picked, allocations) = crate::allocations::during(|| ring.pick(42, |_| true));
        assert_eq!(picked, Some(ring.rank(42)[0]));
        assert_eq!(allocations, 0);
    }
}
