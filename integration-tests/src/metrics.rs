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
    use super::{metric, metric_sum};

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
}
