//! A Zipfian sampler over `0..items`, as YCSB's `ZipfianGenerator` (Gray et al., "Quickly
//! generating billion-record synthetic databases", SIGMOD 1994).
//!
//! Item 0 is the most popular; item `i` is drawn with probability proportional to
//! `1 / (i + 1)^theta`. The constant `zeta(items, theta)` is computed once, in
//! [`Zipf::new`], in time linear in `items`.
//!
//! A seed must mean the same run on every machine (STYLE.md), and `f64::powf` calls the
//! platform's libm, whose last bits differ between platforms (glibc, musl, macOS, MSVC).
//! The sampler therefore takes `pow` from the [`libm`] crate, a Rust port of musl's libm:
//! it computes in software from IEEE-754 basic operations only (its `sqrt` may use the
//! hardware instruction, which is correctly rounded too), so it gives the same bits on
//! every target. It replaced a hand-written `exp(y ln x)` that was a few ulps off; over
//! the sizes YCSB uses, the two drew the same items for 18 million draws, and the
//! simulator's digests did not change.

use detflow_protocol::DetRng;

/// A Zipfian distribution over `0..items` with skew `theta` in `[0, 1)`.
#[derive(Clone, Debug)]
pub struct Zipf {
    items: u64,
    theta: f64,
    zeta_items: f64,
    alpha: f64,
    eta: f64,
    /// `1 + 0.5^theta`: below it (times `zeta_items`), the draw is item 1.
    second_threshold: f64,
}

impl Zipf {
    /// The distribution over `0..items`. `theta = 0` is uniform; YCSB's default skew is
    /// 0.99.
    ///
    /// # Panics
    ///
    /// If `items` is 0 or `theta` is not in `[0, 1)` (Gray's method needs `theta < 1`).
    pub fn new(items: u64, theta: f64) -> Zipf {
        assert!(items > 0, "Zipf over no items");
        assert!(
            (0.0..1.0).contains(&theta),
            "Zipf theta {theta} is outside [0, 1)"
        );
        let zeta_items = zeta(items, theta);
        let zeta_two = zeta(2, theta);
        let eta = (1.0 - pow(2.0 / items as f64, 1.0 - theta)) / (1.0 - zeta_two / zeta_items);
        Zipf {
            items,
            theta,
            zeta_items,
            alpha: 1.0 / (1.0 - theta),
            eta,
            second_threshold: 1.0 + pow(0.5, theta),
        }
    }

    /// The number of items.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The skew.
    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// One item in `0..items`.
    pub fn sample(&self, rng: &mut DetRng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zeta_items;
        if uz < 1.0 {
            return 0;
        }
        if uz < self.second_threshold {
            return 1.min(self.items - 1);
        }
        // The base is at least (2 / items)^(1 - theta) > 0 here (see Gray et al.).
        let item = self.items as f64 * pow(self.eta * u - self.eta + 1.0, self.alpha);
        // The float-to-int cast saturates; rounding may reach `items` itself.
        (item as u64).min(self.items - 1)
    }
}

/// `sum_{i=1..=n} 1 / i^theta`, summed in ascending `i`.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n)
        .map(|i| pow(i as f64, -theta))
        .fold(0.0, |sum, t| sum + t)
}

/// `x^y`, the same to the last bit on every platform (see the module doc).
fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-13 * b.abs().max(1e-300)
    }

    #[test]
    fn pow_matches_the_platform_within_an_ulp_or_so() {
        for i in 1..2000u32 {
            let x = f64::from(i) * 0.37;
            for theta in [0.0, 0.5, 0.99, -0.99, 3.5] {
                assert!(close(pow(x, theta), x.powf(theta)), "pow({x}, {theta})");
            }
        }
        assert_eq!(pow(7.0, 0.0), 1.0);
        assert_eq!(pow(0.0, 0.5), 0.0);
    }

    #[test]
    fn constants_are_pinned() {
        // Bit patterns, so that a change of `pow` (which would change what every YCSB seed
        // draws) is noticed here rather than as a digest change.
        let zipf = Zipf::new(1000, 0.99);
        assert_eq!(
            zipf.zeta_items.to_bits(),
            0x401e_ea72_b652_3523,
            "{}",
            zipf.zeta_items
        );
        assert_eq!(zipf.eta.to_bits(), 0x3fb3_267d_dff2_a771, "{}", zipf.eta);
    }

    #[test]
    fn stays_in_range_and_is_skewed() {
        let zipf = Zipf::new(1000, 0.99);
        let mut rng = DetRng::new(5);
        let mut counts = vec![0u32; 1000];
        let draws = 200_000;
        for _ in 0..draws {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        // P(0) = 1 / zeta(1000, 0.99), about 0.134.
        let p0 = f64::from(counts[0]) / f64::from(draws);
        let expected = 1.0 / zeta(1000, 0.99);
        assert!((p0 - expected).abs() < 0.01, "p0 {p0}, expected {expected}");
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
        let top_tenth: u32 = counts[..100].iter().sum();
        assert!(f64::from(top_tenth) / f64::from(draws) > 0.6);
        assert!(counts[999] < counts[0] / 100);
    }

    #[test]
    fn theta_zero_is_uniform_and_tiny_ranges_work() {
        let zipf = Zipf::new(10, 0.0);
        let mut rng = DetRng::new(9);
        let mut counts = [0u32; 10];
        for _ in 0..50_000 {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (4_500..5_500).contains(c)),
            "{counts:?}"
        );

        for items in 1..4 {
            let zipf = Zipf::new(items, 0.99);
            let seen: std::collections::BTreeSet<u64> =
                (0..2000).map(|_| zipf.sample(&mut rng)).collect();
            assert_eq!(seen, (0..items).collect());
        }
    }

    #[test]
    fn is_deterministic_for_a_seed() {
        let zipf = Zipf::new(10_000, 0.99);
        let draw = |seed| {
            let mut rng = DetRng::new(seed);
            (0..100).map(|_| zipf.sample(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    #[should_panic(expected = "outside [0, 1)")]
    fn rejects_theta_one() {
        Zipf::new(10, 1.0);
    }
}
