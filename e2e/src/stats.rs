//! Summaries of a benchmark's samples.

/// The nearest-rank percentile `p` (0 to 100) of `sorted` (ascending, not empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The median and the 99th percentile (nearest rank) of `values` (in any order, not empty).
pub fn p50_p99(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (percentile(&sorted, 50.0), percentile(&sorted, 99.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&sorted, 0.0), 1.0);
        assert_eq!(p50_p99(&[3.0, 1.0, 2.0]), (2.0, 3.0));
    }
}
