//! A histogram one shard writes: fixed bucket bounds, one plain counter per bucket plus a
//! sum, each written by its shard's thread only (load + store, no read-modify-write).
//! At scrape the buckets of every shard are added up and rendered as one Prometheus
//! histogram (`_bucket{le}`, `_sum`, `_count`).
//!
//! Values are whole numbers of the histogram's [`Scale`] (nanoseconds for durations,
//! frames for batch sizes), so recording needs no floating point.

use super::counters::Count;

/// The unit values are recorded in, and how they are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Recorded in nanoseconds, shown in seconds.
    Nanos,
    /// Recorded and shown as plain numbers.
    Units,
}

impl Scale {
    /// `value` in the unit the metric is rendered in.
    pub fn show(self, value: u64) -> f64 {
        match self {
            Scale::Nanos => value as f64 / 1e9,
            Scale::Units => value as f64,
        }
    }
}

/// The bounds of one kind of histogram: inclusive upper bounds in recorded units,
/// ascending; a last `+Inf` bucket is implied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    /// Upper bounds (`le`), ascending.
    pub bounds: &'static [u64],
    /// How values are recorded and shown.
    pub scale: Scale,
}

const MICRO: u64 = 1_000;
const MILLI: u64 = 1_000_000;

/// One inbox loop turn: 1 µs to 100 ms.
pub const LOOP_TURN: Buckets = Buckets {
    bounds: &[
        MICRO,
        5 * MICRO,
        10 * MICRO,
        25 * MICRO,
        50 * MICRO,
        100 * MICRO,
        250 * MICRO,
        500 * MICRO,
        MILLI,
        5 * MILLI,
        10 * MILLI,
        25 * MILLI,
        100 * MILLI,
    ],
    scale: Scale::Nanos,
};

/// One HTTP request, from the complete request to the answer written: 100 µs to 10 s.
pub const HTTP_REQUEST: Buckets = Buckets {
    bounds: &[
        100 * MICRO,
        250 * MICRO,
        500 * MICRO,
        MILLI,
        5 * MILLI,
        10 * MILLI,
        25 * MILLI,
        50 * MILLI,
        100 * MILLI,
        250 * MILLI,
        500 * MILLI,
        1_000 * MILLI,
        2_500 * MILLI,
        10_000 * MILLI,
    ],
    scale: Scale::Nanos,
};

/// Frames per `writev` of a connection's writer: 1 to 1,024 (the writer's cap).
pub const WRITE_BATCH: Buckets = Buckets {
    bounds: &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
    scale: Scale::Units,
};

/// One shard's histogram.
#[derive(Debug)]
pub struct Histogram {
    buckets: Buckets,
    /// One count per bound, then the `+Inf` bucket.
    counts: Box<[Count]>,
    sum: Count,
}

impl Histogram {
    /// An empty histogram with `buckets`.
    pub fn new(buckets: Buckets) -> Histogram {
        Histogram {
            buckets,
            counts: (0..=buckets.bounds.len())
                .map(|_| Count::default())
                .collect(),
            sum: Count::default(),
        }
    }

    /// Records one value. Only the owning shard's thread calls this.
    pub fn observe(&self, value: u64) {
        let at = self.buckets.bounds.partition_point(|bound| *bound < value);
        self.counts[at].inc();
        self.sum.add(value);
    }

    /// The bounds.
    pub fn buckets(&self) -> Buckets {
        self.buckets
    }
}

/// Histograms of every shard added up, ready to render.
#[derive(Debug, Clone, PartialEq)]
pub struct Summed {
    /// `(upper bound, count in that bucket)`, the last bound `+Inf` (not cumulative:
    /// the encoder accumulates).
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the values, in the rendered unit.
    pub sum: f64,
    /// Number of values.
    pub count: u64,
}

/// Adds up `histograms` (all of the same [`Buckets`]).
pub fn sum<'a>(buckets: Buckets, histograms: impl Iterator<Item = &'a Histogram>) -> Summed {
    let mut counts = vec![0u64; buckets.bounds.len() + 1];
    let mut total = 0u64;
    for histogram in histograms {
        debug_assert_eq!(histogram.buckets, buckets);
        for (into, count) in counts.iter_mut().zip(histogram.counts.iter()) {
            *into += count.get();
        }
        total = total.wrapping_add(histogram.sum.get());
    }
    let bounds = buckets
        .bounds
        .iter()
        .map(|b| buckets.scale.show(*b))
        .chain(std::iter::once(f64::INFINITY));
    let count = counts.iter().sum();
    Summed {
        buckets: bounds.zip(counts).collect(),
        sum: buckets.scale.show(total),
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::new(WRITE_BATCH);
        for v in [1, 2, 3, 1024, 1025, 0] {
            h.observe(v);
        }
        let s = sum(WRITE_BATCH, std::iter::once(&h));
        assert_eq!(s.count, 6);
        assert_eq!(s.sum, 2055.0);
        assert_eq!(s.buckets[0], (1.0, 2), "0 and 1");
        assert_eq!(s.buckets[1], (2.0, 1));
        assert_eq!(s.buckets[2], (4.0, 1), "3");
        assert_eq!(s.buckets[10], (1024.0, 1));
        assert_eq!(s.buckets[11], (f64::INFINITY, 1), "1025");
    }

    #[test]
    fn shards_are_added_up_and_nanoseconds_shown_as_seconds() {
        let (a, b) = (Histogram::new(LOOP_TURN), Histogram::new(LOOP_TURN));
        a.observe(3 * MICRO);
        b.observe(2 * MILLI);
        let s = sum(LOOP_TURN, [&a, &b].into_iter());
        assert_eq!(s.count, 2);
        assert!((s.sum - 0.002003).abs() < 1e-12, "{}", s.sum);
        assert_eq!(s.buckets[1], (5e-6, 1));
        assert_eq!(s.buckets[9], (5e-3, 1));
    }
}
