//! The engine's store commits during the fixed-rate phase, from its own histogram
//! (`chat21_store_commit_seconds` on the ops port): how long the group commit that every
//! input waits for took, so a latency tail can be told apart from the rest of the path.

/// One scrape of the histogram: (upper bound in seconds, cumulative count) per bucket.
#[derive(Debug, Default, Clone)]
pub struct Commits {
    buckets: Vec<(f64, u64)>,
}

impl Commits {
    /// Scrape `/metrics` on `port`; empty when the engine has no store or does not answer.
    pub async fn scrape(port: u16) -> Commits {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let Ok(answer) = reqwest::get(&url).await else {
            return Commits::default();
        };
        let text = answer.text().await.unwrap_or_default();
        Commits::parse(&text)
    }

    fn parse(text: &str) -> Commits {
        let buckets = text
            .lines()
            .filter_map(|l| l.strip_prefix("chat21_store_commit_seconds_bucket{le=\""))
            .filter_map(|l| {
                let (le, count) = l.split_once("\"} ")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        Commits { buckets }
    }

    /// The commits between `earlier` and `self`: count, and the p50 and p99 as the upper
    /// bounds of their buckets, in ms (the buckets double from 0.1 ms).
    pub fn since(&self, earlier: &Commits) -> (u64, f64, f64) {
        let diff: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|(le, n)| {
                let before = earlier.buckets.iter().find(|(l, _)| l == le).map_or(0, |(_, n)| *n);
                (*le, n.saturating_sub(before))
            })
            .collect();
        let total = diff.last().map_or(0, |(_, n)| *n);
        let at = |q: f64| {
            let want = (total as f64 * q).ceil() as u64;
            diff.iter().find(|(_, n)| *n >= want).map_or(0.0, |(le, _)| le * 1000.0)
        };
        (total, at(0.50), at(0.99))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_between_two_scrapes() {
        let a = Commits::parse(
            "chat21_store_commit_seconds_bucket{le=\"0.001\"} 10\nchat21_store_commit_seconds_bucket{le=\"0.002\"} 10\nchat21_store_commit_seconds_bucket{le=\"+Inf\"} 10\n",
        );
        let b = Commits::parse(
            "chat21_store_commit_seconds_bucket{le=\"0.001\"} 60\nchat21_store_commit_seconds_bucket{le=\"0.002\"} 109\nchat21_store_commit_seconds_bucket{le=\"+Inf\"} 110\n",
        );
        let (n, p50, p99) = b.since(&a);
        assert_eq!(n, 100);
        assert_eq!(p50, 1.0);
        assert_eq!(p99, 2.0);
    }
}
