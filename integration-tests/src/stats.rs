//! Summaries of measured samples for the benchmarks' tables.

/// The `p`-th percentile (0 to 100, nearest rank) of `sorted`, which must be sorted
/// ascending; `None` when there are no samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * last as f64).round() as usize;
    Some(sorted[rank.min(last)])
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_takes_the_nearest_rank() {
        let v: Vec<u32> = (1..=101).collect();
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 50.0), Some(51));
        assert_eq!(percentile(&v, 99.0), Some(100));
        assert_eq!(percentile(&v, 100.0), Some(101));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
    }
}
