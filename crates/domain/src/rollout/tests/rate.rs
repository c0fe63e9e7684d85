//! Pacing, ramp-up and max_in_flight.

use super::*;
use ExecutionStatus::*;

/// Launches per minute since `start`, for `minutes` minutes.
fn per_minute(sim: &Sim, start: TimestampMs, minutes: i64) -> Vec<usize> {
    (0..minutes)
        .map(|k| {
            let (from, to) = (start + k * MIN, start + (k + 1) * MIN);
            sim.launches
                .iter()
                .filter(|l| (from..to).contains(&l.0))
                .count()
        })
        .collect()
}

#[test]
fn fixed_rate_keeps_every_minute_within_two_percent() {
    for (rate, minutes) in [(7u32, 5i64), (100, 5), (1_000, 3), (40_000, 2)] {
        // Given more targets than the rate can reach in the time,
        let n = (rate as i64 * minutes + 10) as usize;
        let mut sim = Sim::start(group(rate), T0);
        for chunk in things(n).chunks(10_000) {
            sim.add(chunk.to_vec());
        }
        // when the owner runs for `minutes` minutes,
        sim.run(T0 + minutes * MIN, Succeeded);
        // then each minute saw max_per_minute launches, within 2 %.
        let counts = per_minute(&sim, T0, minutes);
        let tolerance = (f64::from(rate) * 0.02).floor() as usize;
        for c in &counts {
            assert!(
                c.abs_diff(rate as usize) <= tolerance,
                "rate {rate}: {counts:?}"
            );
        }
    }
}

#[test]
fn any_sliding_minute_stays_within_two_percent() {
    let mut sim = Sim::start(list(1_000, 100), T0);
    sim.run(T0 + 5 * MIN, Succeeded);
    let times: Vec<i64> = sim.launches.iter().map(|l| l.0).collect();
    for &from in &times {
        let n = times
            .iter()
            .filter(|&&t| (from..from + MIN).contains(&t))
            .count();
        assert!(n <= 102, "{n} launches in the minute from {from}");
    }
    // Evenly paced: one every 600 ms exactly.
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == 600),
        "{:?}",
        &times[..5]
    );
}

#[test]
fn very_high_rates_keep_fractional_credit_across_milliseconds() {
    // Given 1,000,000 per minute: one launch every 0.06 ms, planned on whole milliseconds,
    let mut sim = Sim::start(group(1_000_000), T0);
    sim.add(things(5_000));
    // when the owner runs for 120 ms,
    sim.run(T0 + 120, Succeeded);
    let n = sim.launches.iter().filter(|l| l.0 < T0 + 120).count();
    // then it launched 2,000 (± 2 %), never more than 18 in one millisecond.
    assert!(n.abs_diff(2_000) <= 40, "{n}");
    let mut per_ms = std::collections::BTreeMap::new();
    for l in &sim.launches {
        *per_ms.entry(l.0).or_insert(0) += 1;
    }
    assert!(per_ms.values().all(|&c| c <= 18), "{per_ms:?}");
}

#[test]
fn an_idle_period_leaves_at_most_one_interval_of_credit() {
    // Given a group rollout at 60 per minute with one target, then nothing for 10 minutes,
    let mut sim = Sim::start(group(60), T0);
    sim.add(things(1));
    sim.run(T0 + SEC, Succeeded);
    assert_eq!(sim.launches.len(), 1);
    // when 100 more targets arrive,
    sim.now = T0 + 10 * MIN;
    sim.add(things(101));
    let (plan, _) = sim.step();
    // then the first plan launches at most two (the slot now and one carried),
    let burst = launching(&plan).len();
    assert!((1..=2).contains(&burst), "{burst}");
    assert_eq!(
        plan.wake_at,
        Some(sim.now + SEC),
        "then one per second again"
    );
    sim.run(T0 + 11 * MIN, Succeeded);
    let in_minute = per_minute(&sim, T0 + 10 * MIN, 1)[0];
    assert!((60..=61).contains(&in_minute), "{in_minute}");
}

#[test]
fn max_in_flight_caps_live_executions() {
    // Given max_in_flight 3 at one launch per millisecond,
    let mut s = list(10, 60_000);
    s.max_in_flight = Some(3);
    let mut sim = Sim::start(s, T0);
    // when planning for 10 ms without settling,
    let mut last = Plan::default();
    for _ in 0..10 {
        last = sim.step().0;
        sim.now += 1;
    }
    // then three are launched in all and the owner waits for a settle (no wake-up),
    assert_eq!(sim.launches.len(), 3);
    assert_eq!(last.wake_at, None);
    assert_eq!(sim.r().counts().in_flight, 3);
    // and each settle frees one slot at once.
    let first = sim.launches[0].3.clone();
    sim.settle(&first, Succeeded);
    let (next, _) = sim.step();
    assert_eq!(launching(&next), vec![(3, 1)]);
    assert_eq!(sim.r().counts().in_flight, 3);
    assert_eq!(sim.r().counts().queued, 6);
}

fn ramp(increase_after: IncreaseCriteria) -> RolloutSpec {
    let mut s = list(40, 1);
    s.rate = Rate::ExponentialRampUp {
        base_per_minute: 10,
        increment_factor: 2.0,
        increase_after,
        max_per_minute: 50,
    };
    s
}

fn rates(sim: &Sim) -> Vec<u32> {
    sim.log
        .iter()
        .filter_map(|(e, _)| match e {
            RolloutEvent::RateIncreased { per_minute } => Some(*per_minute),
            _ => None,
        })
        .collect()
}

#[test]
fn ramp_up_multiplies_the_rate_after_every_n_notified() {
    // Given base 10/min ×2 after every 5 notified targets, capped at 50,
    let mut sim = Sim::start(
        ramp(IncreaseCriteria {
            notified: Some(5),
            succeeded: None,
        }),
        T0,
    );
    assert_eq!(sim.r().per_minute(), 10);
    // when it runs, then the rate steps 10 → 20 → 40 → 50 and stays there,
    sim.run(T0 + 10 * MIN, Failed);
    assert_eq!(rates(&sim), vec![20, 40, 50]);
    assert_eq!(sim.r().per_minute(), 50);
    // and the launches are paced at each step's interval: 6 s, 3 s, 1.5 s, 1.2 s.
    let t: Vec<i64> = sim.launches.iter().map(|l| l.0 - T0).collect();
    assert_eq!(&t[..6], &[0, 6_000, 12_000, 18_000, 24_000, 30_000]);
    assert_eq!(t[6] - t[5], 3_000);
    assert_eq!(t[11] - t[10], 1_500);
    assert_eq!(t[16] - t[15], 1_200);
    assert_eq!(sim.r().counts().failed, 40, "failures still notify");
}

#[test]
fn ramp_up_on_succeeded_ignores_failures() {
    // Given ×2 after every 5 succeeded,
    let s = ramp(IncreaseCriteria {
        notified: None,
        succeeded: Some(5),
    });
    let mut sim = Sim::start(s.clone(), T0);
    // when all fail, then the rate never moves;
    sim.run(T0 + 5 * MIN, Failed);
    assert_eq!(rates(&sim), Vec::<u32>::new());
    // when all succeed, it does.
    let mut sim = Sim::start(s, T0);
    sim.run(T0 + 5 * MIN, Succeeded);
    assert_eq!(rates(&sim), vec![20, 40, 50]);
}

#[test]
fn ramp_up_from_a_small_base_gains_at_least_one_per_step() {
    let mut s = list(10, 1);
    s.rate = Rate::ExponentialRampUp {
        base_per_minute: 1,
        increment_factor: 1.1,
        increase_after: IncreaseCriteria {
            notified: Some(1),
            succeeded: None,
        },
        max_per_minute: 4,
    };
    let mut sim = Sim::start(s, T0);
    sim.run(T0 + 10 * MIN, Succeeded);
    assert_eq!(rates(&sim), vec![2, 3, 4]);
}
