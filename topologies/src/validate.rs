//! TODO: static plan checks (being written).
use crate::Plan;

/// A defect found in a single plan without running it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanDefect {
    /// Placeholder.
    #[error("not implemented")]
    NotImplemented,
}

/// Checks one plan on its own.
pub fn validate_plan(_plan: &Plan) -> Result<(), PlanDefect> {
    Ok(())
}
