//! The fault switches: what the gateway does wrong, on purpose, and how often.
//!
//! `down` and `latency_ms` apply to every `/v1` request. The other faults apply to the
//! requests that move money (`POST` a charge or a refund), after the request was
//! validated, so a malformed request never uses up a `fail_next`. Two of them answer an
//! ambiguous 409 with the same body, so a client cannot tell them apart by the answer:
//! `ambiguous_next` after doing the work (the money moved), `busy_next` without (nothing
//! moved, the key stays unused), as a PSP answers while another request holds the key. Each such request takes
//! exactly one draw from the seeded generator, whether or not a rate is set, so with a
//! fixed seed the n-th write request always meets the same fate.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Every switch, as `GET /_control` shows it and `PUT /_control` takes it (any subset of
/// the fields; the rest keep their values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Switches {
    /// Added to every `/v1` request before it is handled.
    pub latency_ms: u64,
    /// Fraction of money-moving requests answered 503 without charging.
    pub error_rate: f64,
    /// Fraction that charge nothing and hold the connection for `hang_ms`, then close it.
    pub timeout_rate: f64,
    /// Fraction that are carried out (the money moves) but whose connection is closed
    /// without a response.
    pub lost_response_rate: f64,
    /// How long a hanging request is held; longer than any sane client timeout.
    pub hang_ms: u64,
    /// Every request but `/_control` is answered 503.
    pub down: bool,
    /// The next N money-moving requests are answered 503 (nothing charged).
    pub fail_next: u32,
    /// The next N hang like `timeout_rate` (nothing charged).
    pub hang_next: u32,
    /// The next N are carried out and their responses lost.
    pub lose_next: u32,
    /// The next N new charges are declined (402), whatever their method.
    pub decline_next: u32,
    /// The next N are carried out (the money moves, the key keeps its real answer for
    /// replays) but answered 409 "a request with this key is in progress".
    pub ambiguous_next: u32,
    /// The next N are answered that same 409 without doing anything (nothing charged,
    /// the key stays unused).
    pub busy_next: u32,
    /// Seeds the generator behind the rates; setting it (even to the same value)
    /// restarts the sequence.
    pub seed: u64,
}

impl Default for Switches {
    fn default() -> Self {
        Switches {
            latency_ms: 0,
            error_rate: 0.0,
            timeout_rate: 0.0,
            lost_response_rate: 0.0,
            hang_ms: 30_000,
            down: false,
            fail_next: 0,
            hang_next: 0,
            lose_next: 0,
            decline_next: 0,
            ambiguous_next: 0,
            busy_next: 0,
            seed: 0,
        }
    }
}

/// The field names `PUT /_control` accepts (checked against `Switches` in a unit test).
pub(crate) const FIELDS: &[&str] = &[
    "latency_ms",
    "error_rate",
    "timeout_rate",
    "lost_response_rate",
    "hang_ms",
    "down",
    "fail_next",
    "hang_next",
    "lose_next",
    "decline_next",
    "ambiguous_next",
    "busy_next",
    "seed",
];

impl Switches {
    pub fn validate(&self) -> Result<()> {
        for (field, rate) in [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
            ("lost_response_rate", self.lost_response_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(Error::validation(field, "must be between 0 and 1"));
            }
        }
        // The rates split one draw into disjoint slices, so together they cannot pass 1.
        if self.error_rate + self.timeout_rate + self.lost_response_rate > 1.0 {
            return Err(Error::validation(
                "error_rate",
                "error_rate + timeout_rate + lost_response_rate must not exceed 1",
            ));
        }
        Ok(())
    }
}

/// What happens to one money-moving request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    /// 503, nothing done.
    Unavailable,
    /// Nothing done; the connection is held this long and then closed without a response.
    Hang(Duration),
    /// Done; the connection is then closed without a response.
    LoseResponse,
    /// Done; answered 409 as if the key were in use.
    Ambiguous,
    /// Nothing done; answered the same 409.
    Busy,
}

/// The switches with the generator they drive.
pub(crate) struct Faults {
    pub(crate) switches: Switches,
    rng: StdRng,
}

impl Faults {
    pub(crate) fn new(switches: Switches) -> Result<Self> {
        switches.validate()?;
        let rng = StdRng::seed_from_u64(switches.seed);
        Ok(Faults { switches, rng })
    }

    /// Applies a partial update given as a JSON object; unknown fields and bad values are
    /// refused and leave every switch as it was.
    pub(crate) fn apply(
        &mut self,
        patch: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        if let Some(unknown) = patch.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(Error::validation(
                unknown,
                format!("unknown switch; known: {}", FIELDS.join(", ")),
            ));
        }
        let mut merged = serde_json::to_value(&self.switches).map_err(Error::internal)?;
        let reseed = patch.contains_key("seed");
        for (field, value) in patch {
            merged[field] = value;
        }
        let switches: Switches = serde_path_to_error::deserialize(merged)
            .map_err(|e| Error::validation(&e.path().to_string(), e.inner().to_string()))?;
        switches.validate()?;
        if reseed {
            self.rng = StdRng::seed_from_u64(switches.seed);
        }
        self.switches = switches;
        Ok(())
    }

    /// Decides the fate of one money-moving request. The one-shot counters come first
    /// (in the order fail, hang, lose, ambiguous, busy), then the rates.
    pub(crate) fn decide(&mut self) -> Fault {
        let draw: f64 = self.rng.random();
        let s = &mut self.switches;
        let hang = Fault::Hang(Duration::from_millis(s.hang_ms));
        for (counter, fault) in [
            (&mut s.fail_next, Fault::Unavailable),
            (&mut s.hang_next, hang),
            (&mut s.lose_next, Fault::LoseResponse),
            (&mut s.ambiguous_next, Fault::Ambiguous),
            (&mut s.busy_next, Fault::Busy),
        ] {
            if *counter > 0 {
                *counter -= 1;
                return fault;
            }
        }
        let mut edge = 0.0;
        for (rate, fault) in [
            (s.error_rate, Fault::Unavailable),
            (s.timeout_rate, hang),
            (s.lost_response_rate, Fault::LoseResponse),
        ] {
            edge += rate;
            if draw < edge {
                return fault;
            }
        }
        Fault::None
    }

    /// Uses up one `decline_next`, if any is left.
    pub(crate) fn take_decline(&mut self) -> bool {
        if self.switches.decline_next > 0 {
            self.switches.decline_next -= 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn the_control_field_list_matches_the_switches() {
        let value = serde_json::to_value(Switches::default()).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut fields = FIELDS.to_vec();
        keys.sort_unstable();
        fields.sort_unstable();
        assert_eq!(keys, fields);
    }

    #[test]
    fn counters_come_before_rates_and_run_out() {
        let mut faults = Faults::new(Switches {
            fail_next: 1,
            hang_next: 1,
            lose_next: 1,
            ambiguous_next: 1,
            busy_next: 1,
            hang_ms: 5,
            ..Switches::default()
        })
        .unwrap();
        assert_eq!(faults.decide(), Fault::Unavailable);
        assert_eq!(faults.decide(), Fault::Hang(Duration::from_millis(5)));
        assert_eq!(faults.decide(), Fault::LoseResponse);
        assert_eq!(faults.decide(), Fault::Ambiguous);
        assert_eq!(faults.decide(), Fault::Busy);
        assert_eq!(faults.decide(), Fault::None);
    }

    #[test]
    fn the_same_seed_gives_the_same_fates() {
        let switches = Switches {
            error_rate: 0.3,
            timeout_rate: 0.2,
            lost_response_rate: 0.1,
            seed: 99,
            ..Switches::default()
        };
        let fates = |mut f: Faults| (0..100).map(|_| f.decide()).collect::<Vec<_>>();
        let first = fates(Faults::new(switches.clone()).unwrap());
        assert_eq!(first, fates(Faults::new(switches).unwrap()));
        assert!(first.contains(&Fault::None) && first.contains(&Fault::LoseResponse));
    }

    #[test]
    fn a_bad_patch_names_the_field_and_changes_nothing() {
        let mut faults = Faults::new(Switches::default()).unwrap();
        let err = faults
            .apply(patch(json!({"latency_ms": 5, "error_rate": 1.5})))
            .unwrap_err();
        assert!(matches!(err, Error::Validation { ref field, .. } if field == "error_rate"));
        let err = faults.apply(patch(json!({"down": "yes"}))).unwrap_err();
        assert!(matches!(err, Error::Validation { ref field, .. } if field == "down"));
        let err = faults.apply(patch(json!({"slow": true}))).unwrap_err();
        assert!(matches!(err, Error::Validation { ref field, .. } if field == "slow"));
        let err = faults
            .apply(patch(json!({"error_rate": 0.6, "timeout_rate": 0.6})))
            .unwrap_err();
        assert!(matches!(err, Error::Validation { .. }));
        assert_eq!(faults.switches, Switches::default());
    }

    #[test]
    fn setting_the_seed_restarts_the_sequence() {
        let mut faults = Faults::new(Switches {
            error_rate: 0.5,
            seed: 7,
            ..Switches::default()
        })
        .unwrap();
        let first: Vec<_> = (0..20).map(|_| faults.decide()).collect();
        faults.apply(patch(json!({"seed": 7}))).unwrap();
        let again: Vec<_> = (0..20).map(|_| faults.decide()).collect();
        assert_eq!(first, again);
    }
}
