//! Choosing a server of a pool for one delivery, by the pool's `balance` policy. No I/O, no clock.

use crate::config::Balance;

/// What the policy needs to know about one server at the moment of choosing.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Whether the server may be chosen now (up, and not already tried for this delivery).
    pub up: bool,
    pub weight: u32,
    /// Connections carrying a delivery right now.
    pub busy: usize,
}

/// A pool's policy and the state it keeps between choices.
#[derive(Debug)]
pub struct Balancer {
    policy: Balance,
    /// Round robin (and the tie-break of least connections): where the next search starts.
    cursor: usize,
    /// Smooth weighted round robin (nginx): each server's current weight.
    current: Vec<i64>,
}

impl Balancer {
    pub fn new(policy: Balance, servers: usize) -> Self {
        Balancer {
            policy,
            cursor: 0,
            current: vec![0; servers],
        }
    }

    /// The index of the server to use, or `None` when no candidate is up.
    pub fn pick(&mut self, candidates: &[Candidate]) -> Option<usize> {
        match self.policy {
            Balance::Ordered => candidates.iter().position(|c| c.up),
            Balance::RoundRobin => self.round_robin(candidates),
            Balance::Weighted => self.weighted(candidates),
            Balance::LeastConnections => self.least_connections(candidates),
        }
    }

    fn round_robin(&mut self, candidates: &[Candidate]) -> Option<usize> {
        let n = candidates.len();
        let found = (0..n).map(|k| (self.cursor + k) % n).find(|&i| candidates[i].up)?;
        self.cursor = (found + 1) % n;
        Some(found)
    }

    /// Every up server gains its weight; the one with the most is chosen and loses the total. Over
    /// any run of `total` choices each server is chosen exactly `weight` times, spread evenly.
    fn weighted(&mut self, candidates: &[Candidate]) -> Option<usize> {
        self.current.resize(candidates.len(), 0);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, c) in candidates.iter().enumerate().filter(|(_, c)| c.up) {
            self.current[i] += i64::from(c.weight);
            total += i64::from(c.weight);
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }

    fn least_connections(&mut self, candidates: &[Candidate]) -> Option<usize> {
        let n = candidates.len();
        let order = (0..n).map(|k| (self.cursor + k) % n).filter(|&i| candidates[i].up);
        let found = order.min_by_key(|&i| candidates[i].busy)?;
        self.cursor = (found + 1) % n;
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .map(|&weight| Candidate {
                up: true,
                weight,
                busy: 0,
            })
            .collect()
    }

    fn counts(b: &mut Balancer, c: &[Candidate], rounds: usize) -> Vec<usize> {
        let mut counts = vec![0; c.len()];
        for _ in 0..rounds {
            counts[b.pick(c).expect("a server is up")] += 1;
        }
        counts
    }

    #[test]
    fn ordered_takes_the_first_server_that_is_up() {
        let mut c = up(&[1, 1, 1]);
        let mut b = Balancer::new(Balance::Ordered, 3);
        assert_eq!(counts(&mut b, &c, 10), [10, 0, 0]);
        c[0].up = false;
        assert_eq!(b.pick(&c), Some(1));
        c[1].up = false;
        c[2].up = false;
        assert_eq!(b.pick(&c), None);
    }

    #[test]
    fn round_robin_takes_turns_and_skips_servers_that_are_down() {
        let mut c = up(&[1, 1, 1]);
        let mut b = Balancer::new(Balance::RoundRobin, 3);
        assert_eq!(counts(&mut b, &c, 9), [3, 3, 3]);
        c[1].up = false;
        assert_eq!(counts(&mut b, &c, 10), [5, 0, 5]);
    }

    #[test]
    fn weighted_holds_the_weights_exactly_over_each_cycle_and_spreads_them() {
        let c = up(&[1, 2, 7]);
        let mut b = Balancer::new(Balance::Weighted, 3);
        assert_eq!(counts(&mut b, &c, 1000), [100, 200, 700]);
        let picks: Vec<usize> = (0..10).map(|_| b.pick(&c).unwrap()).collect();
        // Smooth: the heavy server never gets more than a few in a row.
        assert!(picks.windows(4).all(|w| w.iter().any(|&i| i != 2)), "{picks:?}");
    }

    #[test]
    fn weighted_shares_out_among_the_servers_that_are_up() {
        let mut c = up(&[1, 2, 7]);
        c[2].up = false;
        let mut b = Balancer::new(Balance::Weighted, 3);
        assert_eq!(counts(&mut b, &c, 300), [100, 200, 0]);
    }

    #[test]
    fn least_connections_takes_the_least_busy_and_rotates_ties() {
        let mut c = up(&[1, 1, 1]);
        c[0].busy = 3;
        c[1].busy = 1;
        c[2].busy = 2;
        let mut b = Balancer::new(Balance::LeastConnections, 3);
        assert_eq!(b.pick(&c), Some(1));
        c[1].busy = 2;
        let picks: Vec<usize> = (0..2).map(|_| b.pick(&c).unwrap()).collect();
        assert_eq!(picks, [2, 1]);
    }
}
