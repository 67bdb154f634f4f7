//! No client required: whether an attempt may start, from what
//! [`super::dereference`] found. A valid run comes out as the one input its
//! builders take ([`ValidatedRun`]); a run that breaks a rule comes out with
//! every rule it breaks.

use crate::policy::{self, SecretKeys, Settings, Tenant, Violation, Warning};
use crate::run::build::{BuildError, RunInput, ValidatedRun};

/// What validation made of an attempt.
#[derive(Debug)]
pub enum Validation<'a> {
    /// The attempt may start; `warnings` are allowed but worth an Event.
    Valid {
        run: Box<ValidatedRun<'a>>,
        warnings: Vec<Warning>,
    },
    /// The run breaks these rules (never empty).
    Rejected(Vec<Violation>),
}

/// Checks the run's pinned spec against the tenant's rules, its Secrets and
/// the operator's settings; then that the run has the metadata its objects
/// take from it.
pub fn validate<'a>(
    input: RunInput<'a>,
    tenant: &Tenant,
    secrets: &SecretKeys,
) -> Result<Validation<'a>, BuildError> {
    let (violations, warnings) =
        policy::check(input.spec, tenant, secrets, Settings::of(input.config));
    if !violations.is_empty() {
        return Ok(Validation::Rejected(violations));
    }
    Ok(Validation::Valid {
        run: Box::new(ValidatedRun::new(input)?),
        warnings,
    })
}
