//! How many decode steps an app can record in a frame without going over a
//! time budget: from the cost per step measured on earlier frames. When one
//! step costs more than a frame's budget, the budget of skipped frames is
//! saved up so that decoding keeps moving (one step every few frames). It
//! only does arithmetic: it never waits for the GPU.

use std::time::Duration;

/// Steps per frame for a time budget, learned from measured step costs.
#[derive(Clone, Debug, Default)]
pub struct FrameBudget {
    /// Smoothed seconds per step; `None` until the first measurement.
    per_step: Option<f64>,
    /// Budget saved up by frames that could not afford a step, seconds.
    credit: f64,
}

impl FrameBudget {
    /// No step cost measured yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Steps to record this frame to spend at most about `budget`, at most
    /// `max` (e.g. [`PASSES_PER_SUBMIT`](crate::PASSES_PER_SUBMIT)): one
    /// while no cost is known, then as many as the budget pays for. When a
    /// step costs more than the budget, zero until the frames' saved budget
    /// pays for one, then one: such a frame goes over by at most a step.
    pub fn steps(&mut self, budget: Duration, max: usize) -> usize {
        let Some(cost) = self.per_step else {
            return 1.min(max);
        };
        let budget = budget.as_secs_f64();
        if cost <= budget {
            self.credit = 0.0;
            return ((budget / cost) as usize).min(max);
        }
        self.credit += budget;
        if self.credit >= cost && max > 0 {
            self.credit -= cost;
            return 1;
        }
        0
    }

    /// Records that `steps` steps took `elapsed`, e.g. from their submit to
    /// the frame whose poll returned their result (an upper bound on their
    /// GPU time). A smoothed average: a slow frame moves it a quarter of
    /// the way.
    pub fn record(&mut self, steps: usize, elapsed: Duration) {
        if steps == 0 {
            return;
        }
        let cost = elapsed.as_secs_f64() / steps as f64;
        self.per_step = Some(match self.per_step {
            None => cost,
            Some(old) => old + 0.25 * (cost - old),
        });
    }

    /// The smoothed cost of one step, once measured.
    pub fn per_step(&self) -> Option<Duration> {
        self.per_step.map(Duration::from_secs_f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1e3)
    }

    #[test]
    fn steps_follow_the_measured_cost_and_carry_unspent_budget() {
        let mut b = FrameBudget::new();
        // Nothing measured: one step to learn from.
        assert_eq!(b.steps(ms(4.0), 64), 1);
        b.record(4, ms(8.0)); // 2 ms a step
        assert_eq!(b.per_step(), Some(ms(2.0)));
        assert_eq!(b.steps(ms(10.0), 64), 5);
        assert_eq!(b.steps(ms(10.0), 3), 3, "capped at max");
        // No frame goes over: what one left unspent is not spent by the next.
        assert_eq!(b.steps(ms(10.0), 64), 5);
        assert_eq!(b.steps(ms(3.0), 64), 1);
        // A step dearer than a frame's share: every third frame affords one.
        let mut b = FrameBudget::new();
        b.record(1, ms(6.0));
        let steps: Vec<usize> = (0..6).map(|_| b.steps(ms(2.0), 64)).collect();
        assert_eq!(steps, [0, 0, 1, 0, 0, 1]);
        // Smoothing: a 4x slower measurement moves the cost a quarter of the way.
        let mut b = FrameBudget::new();
        b.record(1, ms(2.0));
        b.record(1, ms(10.0));
        assert_eq!(b.per_step(), Some(ms(4.0)));
        b.record(0, ms(100.0));
        assert_eq!(b.per_step(), Some(ms(4.0)), "no steps, no measurement");
    }
}
