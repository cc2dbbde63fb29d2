//! TODO: generator (being written).

use crate::{Plan, PlanError, PlanOptions, Shape};

pub(crate) fn plan(shape: &Shape, _rank: usize, _options: &PlanOptions) -> Result<Plan, PlanError> {
    Err(PlanError::InvalidShape { collective: shape.collective, reason: "not implemented yet".into() })
}

