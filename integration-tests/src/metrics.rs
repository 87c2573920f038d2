//! Reading a Prometheus text exposition (`/metrics` of control, edges and backends).

/// The value of the first sample of `name` whose labels include every `labels` pair; an
/// unlabelled metric is asked for with no pairs.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name, labels).next()
}

/// The sum over every sample of `name` whose labels include every `labels` pair (a counter
/// split by further labels); 0 when there is none.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name, labels).sum()
}

/// Each value of `label` among the samples of `name`, with the sum of the samples that
/// carry it, in the label's order (a counter split by `cause`, say).
pub fn metric_by(text: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let mut sums = std::collections::BTreeMap::<String, f64>::new();
    // The label first or after another, not a label whose name ends in it.
    let (first, later) = (format!("{{{label}=\""), format!(",{label}=\""));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if line.split(['{', ' ']).next() != Some(name) {
            continue;
        }
        let found = line.split_once(first.as_str());
        let Some((_, rest)) = found.or_else(|| line.split_once(later.as_str())) else {
            continue;
        };
        let Some((value, _)) = rest.split_once('"') else {
            continue;
        };
        if let Some(v) = line
            .split_whitespace()
            .last()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *sums.entry(value.to_string()).or_default() += v;
        }
    }
    sums.into_iter().collect()
}

fn samples<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(move |l| l.split(['{', ' ']).next() == Some(name))
        .filter(move |l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::{metric, metric_by, metric_sum};

    const TEXT: &str = "# HELP x_total help\n\
                        x_total 3\n\
                        x_total_more 9\n\
                        y{region=\"eu\",kind=\"a\"} 1.5\n\
                        y{region=\"us\"} 2\n";

    #[test]
    fn a_name_matches_whole_not_as_a_prefix() {
        assert_eq!(metric(TEXT, "x_total", &[]), Some(3.0));
        assert_eq!(metric(TEXT, "x", &[]), None);
    }

    #[test]
    fn labels_pick_the_sample() {
        assert_eq!(metric(TEXT, "y", &[("region", "us")]), Some(2.0));
        assert_eq!(metric(TEXT, "y", &[("region", "eu")]), Some(1.5));
        assert_eq!(metric(TEXT, "y", &[("region", "ap")]), None);
    }

    #[test]
    fn a_sum_adds_every_matching_sample() {
        assert_eq!(metric_sum(TEXT, "y", &[]), 3.5);
        assert_eq!(metric_sum(TEXT, "y", &[("kind", "a")]), 1.5);
        assert_eq!(metric_sum(TEXT, "z", &[]), 0.0);
    }

    #[test]
    fn by_label_sums_each_value_apart() {
        let text = "z{cause=\"b\",peer=\"x\"} 1\nz{peer=\"y\",cause=\"b\"} 2\nz{cause=\"a\"} 4\nz{because=\"c\"} 8\nz 16\n";
        assert_eq!(
            metric_by(text, "z", "cause"),
            vec![("a".to_string(), 4.0), ("b".to_string(), 3.0)]
        );
        assert_eq!(
            metric_by(TEXT, "y", "region"),
            vec![("eu".to_string(), 1.5), ("us".to_string(), 2.0)]
        );
        assert!(metric_by(TEXT, "y", "cause").is_empty());
    }
}
