//! Percentiles, computed the way Postgres' `percentile_cont` does (linear
//! interpolation between the two nearest ranks), so client-side and
//! database-side figures mean the same thing.

/// The `p` quantile (0–1) of `sorted` (ascending); `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 1.0);
    let rank = p * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// p50 and p99 of unsorted samples (sorts them in place).
pub fn p50_p99(samples: &mut [f64]) -> (Option<f64>, Option<f64>) {
    samples.sort_by(f64::total_cmp);
    (percentile(samples, 0.5), percentile(samples, 0.99))
}

/// `count / seconds`, or `None` when the span is not positive.
pub fn rate(count: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| count as f64 / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_percentile() {
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn single_value_is_every_percentile() {
        assert_eq!(percentile(&[7.0], 0.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn interpolates_like_percentile_cont() {
        // SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM (VALUES (1),(2),(3),(4)) v(x) → 2.5
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.5));
        // percentile_cont(0.99) over 1..=100 → 99.01
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p99 = percentile(&v, 0.99).unwrap();
        assert!((p99 - 99.01).abs() < 1e-9, "{p99}");
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
    }

    #[test]
    fn p50_p99_sorts_first() {
        let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        let (p50, p99) = p50_p99(&mut v);
        assert_eq!(p50, Some(3.0));
        assert!((p99.unwrap() - 4.96).abs() < 1e-9);
    }

    #[test]
    fn rate_needs_a_positive_span() {
        assert_eq!(rate(10, 0.0), None);
        assert_eq!(rate(10, 2.0), Some(5.0));
    }
}
